//! Passive health and failover end to end: killed and restarted backends, backups, retries, `down = true`, and
//! limpet's own 502 / 504 answers for refused connects, connect timeouts and response timeouts.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

/// One upstream "app" over `servers`, each with its extra keys, and `location_keys` added to the location.
fn config(
    balance: &str,
    upstream_keys: &str,
    location_keys: &str,
    servers: &[(SocketAddr, &str)],
) -> String {
    servers_config(balance, upstream_keys, servers).replace(
        "connect_timeout = \"1s\"",
        &format!("connect_timeout = \"1s\"\n{location_keys}"),
    )
}

/// Stops a backend and waits until its port refuses connections.
async fn kill(backend: &HttpBackend) {
    backend.stop();
    let addr = backend.addr;
    eventually(WAIT, "the killed backend's port to refuse", || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

/// A port that refuses connections: a backend started and killed.
async fn refusing_addr() -> SocketAddr {
    let b = HttpBackend::start("gone").await;
    kill(&b).await;
    b.addr
}

fn assert_plain_error(resp: &Resp, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.text());
    let reason = resp.status.canonical_reason().unwrap();
    assert_eq!(resp.text(), format!("{status} {reason}\n"));
    assert_eq!(resp.headers["content-type"], "text/plain; charset=utf-8");
}

/// How many log lines say a connect to `addr` failed.
fn connect_failures(limpet: &Limpet, addr: SocketAddr) -> usize {
    limpet
        .logs()
        .iter()
        .filter(|l| {
            l.contains("connect failed")
                && !l.contains("server is down")
                && l.contains(&addr.to_string())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_loses_its_traffic_to_the_others() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[(b[0].addr, ""), (b[1].addr, ""), (b[2].addr, "")],
    ));
    for i in 0..6 {
        who(limpet.addr(), &format!("/{i}")).await;
    }
    assert_eq!(b[1].hits(), 2);
    kill(&b[1]).await;
    for i in 0..30 {
        let name = who(limpet.addr(), &format!("/after{i}")).await;
        assert_ne!(name, "b");
    }
    assert_eq!(b[0].hits() + b[2].hits(), 4 + 30);
    // max_fails = 1: one failed connect marks it down for fail_timeout (10s), so it is not tried again.
    assert_eq!(connect_failures(&limpet, b[1].addr), 1);
}

/// A request waiting on a backend that dies gets a prompt 502, not a hang until read_timeout (60s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_on_a_killed_backend_gets_502_at_once() {
    let b = backends(&["a", "b"]).await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[(b[0].addr, ""), (b[1].addr, "")],
    ));
    let addr = limpet.addr();
    let held = tokio::spawn(async move { request(addr, "GET", "/hang", &[], "").await });
    let victim = eventually(WAIT, "the held request at a backend", || {
        let at = b.iter().position(|x| x.hits() == 1);
        async move { at }
    })
    .await;
    kill(&b[victim]).await;
    let resp = held
        .await
        .unwrap()
        .expect("an answer within the client's 10s");
    assert_plain_error(&resp, 502);
    let other = &b[1 - victim];
    for i in 0..5 {
        assert_eq!(who(addr, &format!("/{i}")).await, other.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_every_primary_is_down() {
    let b = backends(&["p1", "p2", "backup"]).await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "retries = 2",
        "",
        &[
            (b[0].addr, "fail_timeout = \"30s\""),
            (b[1].addr, "fail_timeout = \"30s\""),
            (b[2].addr, "backup = true"),
        ],
    ));
    for i in 0..10 {
        assert_ne!(who(limpet.addr(), &format!("/{i}")).await, "backup");
    }
    assert_eq!(b[2].hits(), 0);
    kill(&b[0]).await;
    for i in 0..5 {
        assert_eq!(who(limpet.addr(), &format!("/one{i}")).await, "p2");
    }
    assert_eq!(b[2].hits(), 0, "the backup took traffic while p2 was up");
    kill(&b[1]).await;
    for i in 0..10 {
        assert_eq!(who(limpet.addr(), &format!("/none{i}")).await, "backup");
    }
}

/// A primary comes back on its port: after fail_timeout new requests return to it, and the backup stops taking
/// new requests from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_takes_traffic_back_from_the_backup() {
    let primary = HttpBackend::start("primary").await;
    let backup = HttpBackend::start("backup").await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[
            (primary.addr, "fail_timeout = \"1s\""),
            (backup.addr, "backup = true"),
        ],
    ));
    assert_eq!(who(limpet.addr(), "/").await, "primary");
    let port = primary.addr;
    kill(&primary).await;
    drop(primary);
    for i in 0..5 {
        assert_eq!(who(limpet.addr(), &format!("/down{i}")).await, "backup");
    }
    let primary = HttpBackend::start_on("primary", port).await;
    let addr = limpet.addr();
    eventually(
        WAIT,
        "a request served by the restarted primary",
        || async move { (who(addr, "/back").await == "primary").then_some(()) },
    )
    .await;
    let backup_hits = backup.hits();
    for i in 0..10 {
        assert_eq!(who(addr, &format!("/up{i}")).await, "primary");
    }
    assert_eq!(backup.hits(), backup_hits);
    assert!(primary.hits() >= 11);
}

/// In round robin, a restarted server rejoins the rotation once its fail_timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_rejoins_the_rotation() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[(a.addr, "fail_timeout = \"1s\""), (b.addr, "")],
    ));
    let port = a.addr;
    kill(&a).await;
    drop(a);
    for i in 0..4 {
        assert_eq!(who(limpet.addr(), &format!("/{i}")).await, "b");
    }
    let a = HttpBackend::start_on("a", port).await;
    let addr = limpet.addr();
    eventually(WAIT, "the restarted server to be picked", || async move {
        (who(addr, "/again").await == "a").then_some(())
    })
    .await;
    let before = (a.hits(), b.hits());
    for i in 0..10 {
        who(addr, &format!("/rr{i}")).await;
    }
    assert_eq!((a.hits() - before.0, b.hits() - before.1), (5, 5));
}

/// `retries` bounds how many other servers a failed connect moves on to. With max_fails = 0 the dead servers are
/// never marked down, so every request meets them in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_bound_the_servers_tried_after_a_failed_connect() {
    let dead1 = refusing_addr().await;
    let dead2 = refusing_addr().await;
    let alive = HttpBackend::start("alive").await;
    let servers = [
        (dead1, "max_fails = 0"),
        (dead2, "max_fails = 0"),
        (alive.addr, ""),
    ];
    let outcomes = |retries: u32| {
        let config = config("round_robin", &format!("retries = {retries}"), "", &servers);
        async move {
            let limpet = Limpet::start(&config);
            let mut statuses = Vec::new();
            for i in 0..9 {
                let resp = get(limpet.addr(), &format!("/{i}")).await;
                if resp.status != 200 {
                    assert_plain_error(&resp, 502);
                }
                statuses.push(resp.status.as_u16());
            }
            statuses
        }
    };
    // No retry: the two dead servers' turns fail.
    let none = outcomes(0).await;
    assert_eq!(none.iter().filter(|&&s| s == 502).count(), 6, "{none:?}");
    // One retry: a turn that meets both dead servers still fails.
    let one = outcomes(1).await;
    assert!(one.contains(&502), "{one:?}");
    assert!(one.contains(&200), "{one:?}");
    // Two retries reach the live server every time.
    assert_eq!(outcomes(2).await, vec![200; 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_takes_nothing() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[(b[0].addr, ""), (b[1].addr, "down = true"), (b[2].addr, "")],
    ));
    for i in 0..20 {
        assert_ne!(who(limpet.addr(), &format!("/{i}")).await, "b");
    }
    assert_eq!(b[1].hits(), 0);
    assert_eq!((b[0].hits(), b[2].hits()), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_down_primaries_leave_it_to_the_backup_and_nothing_usable_is_502() {
    let b = backends(&["a", "backup"]).await;
    let with_backup = Limpet::start(&config(
        "round_robin",
        "",
        "",
        &[(b[0].addr, "down = true"), (b[1].addr, "backup = true")],
    ));
    assert_eq!(who(with_backup.addr(), "/").await, "backup");
    let all_down = Limpet::start(&config(
        "least_conn",
        "",
        "",
        &[
            (b[0].addr, "down = true"),
            (b[1].addr, "backup = true\ndown = true"),
        ],
    ));
    let resp = get(all_down.addr(), "/").await;
    assert_plain_error(&resp, 502);
    assert_eq!(b[0].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_refusing_gives_a_short_plain_502() {
    let dead1 = refusing_addr().await;
    let dead2 = refusing_addr().await;
    let limpet = Limpet::start(&config("round_robin", "", "", &[(dead1, ""), (dead2, "")]));
    // The first request tries both; after that both are marked down and limpet answers without trying.
    for i in 0..3 {
        let resp = get(limpet.addr(), &format!("/{i}")).await;
        assert_plain_error(&resp, 502);
    }
    assert_eq!(connect_failures(&limpet, dead1), 1);
    assert_eq!(connect_failures(&limpet, dead2), 1);
}

/// A listener that is bound but never accepts, its one-slot accept queue already taken: a connect to it waits
/// for ever (the kernel drops the SYN), so only `connect_timeout` ends it.
struct BlackHole {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
}

impl BlackHole {
    fn new() -> BlackHole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return BlackHole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    }
                }
                Err(e) => panic!("connect to the black hole: {e}"),
            }
        }
        panic!("the accept queue never filled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_gives_502() {
    let hole = BlackHole::new();
    let limpet = Limpet::start(&config(
        "round_robin",
        "retries = 0",
        "",
        &[(hole.addr, "")],
    ));
    let resp = get(limpet.addr(), "/").await;
    assert_plain_error(&resp, 502);
    limpet.wait_log("connect timed out", WAIT).await;
}

/// A connect timeout is a failed connect like any other: the request moves on to the next server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_retried_on_another_server() {
    let hole = BlackHole::new();
    let alive = HttpBackend::start("alive").await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "retries = 1",
        "",
        &[(hole.addr, ""), (alive.addr, "")],
    ));
    for i in 0..3 {
        assert_eq!(who(limpet.addr(), &format!("/{i}")).await, "alive");
    }
    limpet.wait_log("connect timed out", WAIT).await;
}

/// No answer within read_timeout: 504. The timeout also counts against the server (max_fails = 1), which is
/// then skipped for fail_timeout and used again after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_timeout_gives_504_and_counts_as_a_failure() {
    let backend = HttpBackend::start("b").await;
    let limpet = Limpet::start(&config(
        "round_robin",
        "",
        "read_timeout = \"1s\"",
        &[(backend.addr, "fail_timeout = \"3s\"")],
    ));
    let resp = get(limpet.addr(), "/hang").await;
    assert_plain_error(&resp, 504);
    let next = get(limpet.addr(), "/").await;
    assert_plain_error(&next, 502);
    assert_eq!(backend.hits(), 1, "the marked-down server was tried");
    let addr = limpet.addr();
    eventually(WAIT, "the server back after fail_timeout", || async move {
        (get(addr, "/").await.status == 200).then_some(())
    })
    .await;
}
