//! Keep-alive connections to the servers: kept across reloads, reused most-recent-first, closed once idle for
//! the upstream's `keepalive_timeout`, and never held past a reload by a client connection that stays open.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::metrics::metric;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Distinct upstream connections an HTTP backend has seen requests on.
fn connections_seen(b: &HttpBackend) -> usize {
    b.seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.peer)
        .collect::<HashSet<_>>()
        .len()
}

fn opened(metrics: &str, server: SocketAddr) -> f64 {
    metric(
        metrics,
        "limpet_upstream_connections_opened_total",
        &[("server", &server.to_string())],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_warm_connections_of_unchanged_servers() {
    let b = HttpBackend::start("b").await;
    let other = HttpBackend::start("other").await;
    let limpet = Limpet::start(&servers_config("round_robin", "", &[(b.addr, "")]));
    for _ in 0..10 {
        assert_eq!(who(limpet.addr(), "/").await, "b");
    }
    // A reload that changes other things (a second server, a weight) keeps b's pool.
    limpet.write_config(&servers_config(
        "round_robin",
        "",
        &[(b.addr, "weight = 2"), (other.addr, "")],
    ));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    for _ in 0..10 {
        who(limpet.addr(), "/").await;
    }
    assert_eq!(connections_seen(&b), 1, "b's connection was reopened");
    assert_eq!(opened(&limpet.metrics().await, b.addr), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_open_no_new_upstream_connections() {
    let b = HttpBackend::start("b").await;
    let limpet = Limpet::start(&servers_config("round_robin", "", &[(b.addr, "")]));
    let addr = limpet.addr();
    let done = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                // One keep-alive client connection per worker, 150 requests each.
                let mut s = TcpStream::connect(addr).await.expect("connect");
                for _ in 0..150 {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .expect("write");
                    let r = read_response(&mut s, WAIT).await.expect("response");
                    assert_eq!(status_of(&r), 200, "{r}");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for round in 1..=3 {
        eventually(WAIT, "requests between reloads", || {
            let n = done.load(Ordering::SeqCst);
            async move { (n >= round * 120).then_some(()) }
        })
        .await;
        limpet.write_config(&servers_config(
            "round_robin",
            &format!("retries = {round}"),
            &[(b.addr, "")],
        ));
        limpet.signal("HUP");
    }
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(
        limpet
            .logs()
            .iter()
            .filter(|l| l.contains("config reloaded"))
            .count(),
        3
    );
    // 600 requests, 4 at a time, 3 reloads: the pool's connections serve throughout.
    let m = limpet.metrics().await;
    let n = opened(&m, b.addr);
    assert!(
        n <= 8.0,
        "{n} upstream connections for 4 concurrent clients"
    );
    assert_eq!(connections_seen(&b) as f64, n);
    println!(
        "upstream connections opened per 1,000 requests across 3 reloads: {:.1}",
        n * 1000.0 / 600.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_recently_used_idle_connection_is_reused_first() {
    let b = HttpBackend::start("b").await;
    let limpet = Limpet::start(&servers_config("round_robin", "", &[(b.addr, "")]));
    // Two connections at once; the 600 ms one goes back to the pool last.
    let (fast, slow) = tokio::join!(
        get(limpet.addr(), "/slow/200"),
        get(limpet.addr(), "/slow/600")
    );
    assert_eq!((fast.status.as_u16(), slow.status.as_u16()), (200, 200));
    let peer_of = |path: &str| {
        b.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.uri == path)
            .map(|s| s.peer)
            .expect("seen")
    };
    let last_back = peer_of("/slow/600");
    assert_ne!(peer_of("/slow/200"), last_back, "two connections expected");
    get(limpet.addr(), "/next").await;
    assert_eq!(peer_of("/next"), last_back, "not the most recently used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_closes_after_keepalive_timeout() {
    let raw = RawBackend::start(RawReply::AfterHead(OK.to_vec())).await;
    let limpet = Limpet::start(&servers_config(
        "round_robin",
        "keepalive_timeout = \"1s\"",
        &[(raw.addr, "")],
    ));
    let r = get(limpet.addr(), "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(raw.open_now(), 1, "the connection went back to the pool");
    eventually(WAIT, "the idle pooled connection closed", || {
        let open = raw.open_now();
        async move { (open == 0).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_client_connection_does_not_keep_a_removed_servers_pool() {
    let kept = HttpBackend::start("kept").await;
    let removed = RawBackend::start(RawReply::AfterHead(OK.to_vec())).await;
    let limpet = Limpet::start(&servers_config(
        "round_robin",
        "",
        &[(removed.addr, ""), (kept.addr, "")],
    ));
    // A client keeps one connection open across the reload, after using the server that goes away.
    let mut client = TcpStream::connect(limpet.addr()).await.expect("connect");
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut client, WAIT).await.expect("response");
        assert_eq!(status_of(&r), 200, "{r}");
    }
    assert_eq!(removed.open_now(), 1);
    limpet.write_config(&servers_config("round_robin", "", &[(kept.addr, "")]));
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    eventually(
        WAIT,
        "the removed server's pooled connection closed",
        || {
            let open = removed.open_now();
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    // The client's connection is still served, by the new config.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let r = read_response(&mut client, WAIT).await.expect("response");
    assert!(r.ends_with("kept"), "{r}");
}
