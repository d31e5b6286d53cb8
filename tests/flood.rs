//! A bounded connection flood: 5,000 connections opened and held for 10 s. A normal request succeeds during
//! and after, every held connection is counted, each costs limpet a bounded amount of memory, later floods reuse
//! what the first took, and once they close limpet's memory returns near its start (limpet runs on jemalloc with
//! background purging; with glibc's malloc the freed memory would stay in its arenas).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::metrics::gauge;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const FLOOD: usize = 5_000;
/// Most memory one held connection may cost (measured: about 21 KiB, hyper's 8 KiB read buffer included).
const PER_CONNECTION_KIB: u64 = 64;

/// Opens FLOOD connections in batches; each sends the start of a request head and then nothing.
async fn flood(addr: SocketAddr) -> Vec<TcpStream> {
    let mut held: Vec<TcpStream> = Vec::with_capacity(FLOOD);
    while held.len() < FLOOD {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..250.min(FLOOD - held.len()) {
            batch.spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("flood connect");
                s.write_all(b"GET /flood HTTP/1.1\r\n")
                    .await
                    .expect("flood write");
                s
            });
        }
        while let Some(s) = batch.join_next().await {
            held.push(s.expect("flood task"));
        }
    }
    held
}

async fn wait_clients(limpet: &Limpet, what: &str, done: impl Fn(i64) -> bool) {
    eventually(Duration::from_secs(30), what, || async {
        done(gauge(limpet, "limpet_client_connections_active").await).then_some(())
    })
    .await;
}

/// How close to its start limpet's memory must come back after a flood.
const NEAR_START_KIB: u64 = 30 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_held_connections_leave_service_and_memory_intact() {
    let limit = rlimit::increase_nofile_limit(4 * FLOOD as u64).expect("raise RLIMIT_NOFILE");
    assert!(limit >= 2 * FLOOD as u64, "RLIMIT_NOFILE too low: {limit}");
    let backend = HttpBackend::start("b").await;
    let config = simple_config("round_robin", &[backend.addr], "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\"]\nclient_header_timeout = \"60s\"",
    );
    let limpet = Limpet::start(&config);
    let addr = limpet.addr();
    assert_eq!(get(addr, "/warm").await.status, 200);
    let start_kib = limpet.rss_kib();

    let held = flood(addr).await;
    wait_clients(&limpet, "every flood connection held", |n| {
        n >= FLOOD as i64
    })
    .await;
    let peak_kib = limpet.rss_kib();
    assert_eq!(get(addr, "/during").await.status, 200);
    tokio::time::sleep(Duration::from_secs(10)).await; // hold the flood for its 10 s
    assert_eq!(get(addr, "/still").await.status, 200);
    drop(held);
    wait_clients(&limpet, "flood connections gone", |n| n == 0).await;
    assert_eq!(get(addr, "/after").await.status, 200);
    let first_kib = peak_kib.saturating_sub(start_kib);
    assert!(
        first_kib <= FLOOD as u64 * PER_CONNECTION_KIB,
        "{FLOOD} connections took {first_kib} KiB"
    );

    // Two more floods, opened and closed: the memory the first took is reused. Malloc's per-thread arenas may
    // need one more round to hold it all; a leak would add the first flood's whole amount every round.
    let mut peaks = vec![peak_kib];
    for round in 2..=3 {
        let held = flood(addr).await;
        wait_clients(&limpet, "next flood held", |n| n >= FLOOD as i64).await;
        peaks.push(limpet.rss_kib());
        drop(held);
        wait_clients(&limpet, "next flood gone", |n| n == 0).await;
        assert_eq!(get(addr, &format!("/after/{round}")).await.status, 200);
    }
    // Freed pages go back to the system within seconds (jemalloc's background purge): memory returns near its
    // start.
    let pid_limpet = &limpet;
    let end_kib = eventually(
        Duration::from_secs(30),
        "memory back near its start",
        || async move {
            let now = pid_limpet.rss_kib();
            (now <= start_kib + NEAR_START_KIB).then_some(now)
        },
    )
    .await;
    eprintln!("limpet RSS KiB: start {start_kib}, flood peaks {peaks:?}, end {end_kib}");
    assert!(
        peaks[2].saturating_sub(peaks[1]) <= first_kib / 2,
        "memory keeps growing flood after flood: {peaks:?} KiB (start {start_kib} KiB)"
    );
    assert_eq!(backend.hits(), 6, "no flood head reached the backend");
}
