//! Several limpet instances in front of one Socket.IO fleet, a session's requests reaching either: shared sessions
//! through a real `redis-server` (`sticky.store`), and stateless routing by sid prefix (`sticky.sid_prefix`).
//! Every instance places unknown sids with `fallback = "round_robin"` over three nodes, so a request routed
//! without knowing its session lands on a wrong node two times out of three.

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::eio::{self, json, poll_path, Conn, Exchange, Reply, SESSION_UNKNOWN};
use support::metrics::{lookups, metric};
use support::node::Node;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(20);
const KEY_PREFIX: &str = "limpet:sid:";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_alternating_between_two_instances_stays_on_its_node() {
    let redis = Redis::start();
    let fleet = NodeFleet::start(3, &[]);
    let config = store_config(&fleet.addrs(), &redis.url());
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));

    for round in 0..3 {
        let mut alt = Alt::new(&[a.addr(), b.addr()]).await;
        let sid = eio::open(&mut alt).await;
        let owner = redis
            .get(&format!("{KEY_PREFIX}{sid}"))
            .await
            .expect("the handshake answer came after the session was in Redis");
        let node = fleet
            .id_of(&owner)
            .expect("Redis names a server by its address");
        eio::connect_ns(&mut alt, &sid).await;
        for n in 1..=6 {
            assert_eq!(
                eio::whoami(&mut alt, &sid, n).await,
                node,
                "session {round}, whoami {n}"
            );
        }
        assert!(alt.sent[1] >= 7, "B took its share: {:?}", alt.sent);
    }
    for (name, limpet) in [("A", &a), ("B", &b)] {
        let m = limpet.metrics().await;
        assert_eq!(
            metric(&m, "limpet_sticky_store_errors_total", &[]),
            0.0,
            "{name}: {m}"
        );
        assert_eq!(
            lookups(&m, "miss") + lookups(&m, "dead"),
            0.0,
            "{name}: {m}"
        );
    }

    // The same alternation over two instances that share nothing: B places the sid by round robin.
    let config = sid_config(&fleet.addrs(), "");
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));
    let sid = eio::open(&mut Conn::open(a.addr(), [127, 0, 0, 1]).await).await;
    let mut on_b = Conn::open(b.addr(), [127, 0, 0, 1]).await;
    let mut refused = 0;
    for _ in 0..3 {
        let r = on_b.send("POST", &poll_path(&sid), "", "3").await;
        refused += usize::from(r.status == 400);
    }
    assert_eq!(
        refused, 2,
        "round robin over 3 nodes sends 2 of 3 requests to a node without the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_behind_an_l4_round_robin_over_two_instances() {
    let redis = Redis::start();
    let fleet = NodeFleet::start(3, &[]);
    let config = store_config(&fleet.addrs(), &redis.url());
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));
    let l4 = Forwarder::start(vec![a.addr(), b.addr()]).await;

    let r = SioClient::run_to_end(&l4.url(), "--clients 20 --emits 10 --transports polling").await;
    assert_clean(&r, 20, 10);
    assert_eq!(r["transports"]["polling"], 20, "{r}");
    let spread = l4.connections();
    assert!(
        spread.iter().all(|&n| n > 0),
        "connections per instance {spread:?}"
    );
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let learned = |m: &str| metric(m, "limpet_sticky_learned_total", &[]);
    assert_eq!(
        learned(&ma) + learned(&mb),
        20.0,
        "each session learned once:\n{ma}\n{mb}"
    );
    for m in [&ma, &mb] {
        assert!(lookups(m, "hit") > 0.0, "{m}");
        assert_eq!(
            metric(m, "limpet_sticky_store_errors_total", &[]),
            0.0,
            "{m}"
        );
    }

    // Two instances that share nothing, behind the same spread: clients fail.
    let config = sid_config(&fleet.addrs(), "");
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));
    let l4 = Forwarder::start(vec![a.addr(), b.addr()]).await;
    let r = SioClient::run_to_end(&l4.url(), "--clients 10 --emits 5 --transports polling").await;
    let failed = r["connect_errors"].as_u64().unwrap() + r["emit_errors"].as_u64().unwrap();
    assert!(failed > 0, "without a shared store, sessions break: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_known_sessions_keep_routing_and_new_ones_still_open() {
    let mut redis = Redis::start();
    let fleet = NodeFleet::start(3, &[]);
    let config = store_config(&fleet.addrs(), &redis.url());
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));

    // A session both instances know (B learned it from Redis on its first request).
    let mut alt = Alt::new(&[a.addr(), b.addr()]).await;
    let sid = eio::open(&mut alt).await;
    eio::connect_ns(&mut alt, &sid).await;
    let node = eio::whoami(&mut alt, &sid, 1).await;

    redis.stop();
    for n in 2..=8 {
        assert_eq!(
            eio::whoami(&mut alt, &sid, n).await,
            node,
            "whoami {n} with Redis down"
        );
    }
    // New sessions open and work on the instance that took them.
    for _ in 0..3 {
        let (fresh, _) = eio::session(a.addr(), [127, 0, 0, 1]).await;
        assert!(!fresh.is_empty());
    }
    a.wait_log("session store unavailable", WAIT).await;
    let m = a.metrics().await;
    assert!(
        metric(&m, "limpet_sticky_store_errors_total", &[]) > 0.0,
        "{m}"
    );
    assert_eq!(lookups(&m, "dead"), 0.0, "{m}");

    // Redis back (empty): new sessions are shared again, and known ones are written back as they are used.
    redis.restart();
    let key = format!("{KEY_PREFIX}{sid}");
    let deadline = std::time::Instant::now() + WAIT;
    for n in 9.. {
        assert_eq!(eio::whoami(&mut alt, &sid, n).await, node);
        let back = a
            .logs()
            .iter()
            .any(|l| l.contains("session store reachable again"));
        if back && redis.get(&key).await.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not come back:\n{}",
            a.logs().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_started_under_load_serves_shared_sessions_from_its_first_request() {
    // The shipped config (health checks on) with the Redis store.
    let redis = Redis::start();
    let fleet = NodeFleet::start(3, &[]);
    let store = format!("session_ttl = \"90s\"\nstore = \"{}\"", redis.url());
    let config = shipped_config(&fleet.addrs(), &[("session_ttl = \"90s\"", &store)]);
    let a = Limpet::start(&config);
    let load = SioClient::spawn(
        &a.url(),
        "--clients 20 --transports polling --emits 2 --hold 5000",
    );
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(eio::session(a.addr(), [127, 0, 0, 1]).await);
    }
    // B is used the moment it says it is ready: every session's next request through it reaches its node.
    let b = Limpet::start(&config);
    let mut conn = Conn::open(b.addr(), [127, 0, 0, 1]).await;
    for (n, (sid, node)) in sessions.iter().enumerate() {
        assert_eq!(
            &eio::whoami(&mut conn, sid, 2).await,
            node,
            "session {n} on B"
        );
    }
    let m = b.metrics().await;
    assert_eq!(lookups(&m, "miss") + lookups(&m, "dead"), 0.0, "{m}");
    let r = load.await.expect("client.js");
    assert_connected_cleanly(&r, 20);
    assert_eq!(r["hold_emit_errors"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_routes_known_sessions_from_redis_on_their_first_request() {
    let redis = Redis::start();
    let mut fleet = NodeFleet::start(3, &[]);
    let config = store_config(&fleet.addrs(), &redis.url());
    let a = Limpet::start(&config);
    let b = Limpet::start(&config);

    // Sessions learned through A, and one that B knew too.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(eio::session(a.addr(), [127, 0, 0, 1]).await);
    }
    let mut alt = Alt::new(&[a.addr(), b.addr()]).await;
    let shared = eio::open(&mut alt).await;
    eio::connect_ns(&mut alt, &shared).await;
    sessions.push((shared.clone(), eio::whoami(&mut alt, &shared, 1).await));

    drop(b);
    let b = Limpet::start(&config);
    let mut conn = Conn::open(b.addr(), [127, 0, 0, 1]).await;
    for (sid, node) in &sessions {
        assert_eq!(
            &eio::whoami(&mut conn, sid, 2).await,
            node,
            "{sid} on the new B"
        );
    }
    let m = b.metrics().await;
    assert_eq!(lookups(&m, "miss"), 0.0, "{m}");
    assert_eq!(metric(&m, "limpet_sticky_learned_total", &[]), 0.0, "{m}");
    assert!(lookups(&m, "hit") >= sessions.len() as f64, "{m}");

    // A's round robin put the first and the fourth session on one node. With that node gone, a third instance
    // that never saw them answers each itself when its own request's connect fails (a passive mark alone
    // ends no session: each is confirmed gone by its own failed connect).
    assert_eq!(sessions[0].1, sessions[3].1, "{sessions:?}");
    let victim = fleet
        .nodes
        .iter()
        .position(|n| n.id == sessions[0].1)
        .unwrap();
    fleet.nodes[victim].kill();
    let c = Limpet::start(&config);
    for (sid, _) in [&sessions[0], &sessions[3]] {
        let r = Conn::open(c.addr(), [127, 0, 0, 1])
            .await
            .send("POST", &poll_path(sid), "", "3")
            .await;
        assert_eq!((r.status, r.body.as_str()), (400, SESSION_UNKNOWN), "{r:?}");
    }
    assert_eq!(lookups(&c.metrics().await, "dead"), 2.0);
    let mut conn = Conn::open(c.addr(), [127, 0, 0, 1]).await;
    for (sid, node) in &sessions[1..3] {
        assert_eq!(&eio::whoami(&mut conn, sid, 3).await, node, "{sid} on C");
    }
}

/// Calls of one Redis command so far (`INFO commandstats`).
async fn calls(redis: &Redis, command: &str) -> u64 {
    let info = redis
        .query(&["INFO", "commandstats"])
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_turn_its_requests_into_redis_commands() {
    let redis = Redis::start();
    let fleet = NodeFleet::start(3, &[]);
    let config = store_config(&fleet.addrs(), &redis.url()).replace(
        "fallback = \"round_robin\"",
        "fallback = \"round_robin\"\nsession_ttl = \"1h\"",
    );
    let limpet = Limpet::start(&config);
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let sid = eio::open(&mut conn).await;
    let (sets, gets) = (calls(&redis, "set").await, calls(&redis, "get").await);
    // 1,000 requests of a known session: its expiry is refreshed at most once per session_ttl / 4 (15 min).
    for _ in 0..1000 {
        let r = conn.send("POST", &poll_path(&sid), "", "3").await;
        assert_eq!(r.status, 200, "{r:?}");
    }
    let hit_sets = calls(&redis, "set").await - sets;
    // 1,000 requests of one well-formed sid that no instance knows: Redis is asked once, then it is remembered.
    let forged = "Zm9yZ2VkLXNlc3Npb24tMQ";
    for _ in 0..1000 {
        let r = conn.send("POST", &poll_path(forged), "", "3").await;
        assert_eq!((r.status, r.body.as_str()), (400, SESSION_UNKNOWN), "{r:?}");
    }
    let unknown_gets = calls(&redis, "get").await - gets;
    println!(
        "Redis commands per 1,000 sticky requests: {hit_sets} SET (known session), {unknown_gets} GET (one unknown sid)"
    );
    assert_eq!(hit_sets, 0);
    assert_eq!(unknown_gets, 1);
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_store_errors_total", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(lookups(&m, "hit"), 1000.0, "{m}");
    assert_eq!(lookups(&m, "miss"), 1000.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_expiry_in_redis_is_refreshed_once_per_quarter_ttl() {
    // session_ttl = 4s: a hit refreshes the Redis copy at most once a second, and a session in use never
    // expires there.
    let redis = Redis::start();
    let fleet = NodeFleet::start(1, &[]);
    let config = store_config(&fleet.addrs(), &redis.url()).replace(
        "fallback = \"round_robin\"",
        "fallback = \"round_robin\"\nsession_ttl = \"4s\"",
    );
    let limpet = Limpet::start(&config);
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let sid = eio::open(&mut conn).await;
    let key = format!("{KEY_PREFIX}{sid}");
    let sets = calls(&redis, "set").await;
    let started = tokio::time::Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_secs(6) {
        let r = conn.send("POST", &poll_path(&sid), "", "3").await;
        assert_eq!(r.status, 200, "{r:?}");
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refreshes = calls(&redis, "set").await - sets;
    println!("{requests} requests in 6 s with session_ttl 4s: {refreshes} refreshes");
    assert!(
        redis.get(&key).await.is_some(),
        "a session in use expired in Redis"
    );
    // 6 s of traffic, one refresh per second at most (the first due 1 s after the handshake).
    assert!(
        (3..=7).contains(&refreshes),
        "{refreshes} refreshes for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sid_prefix_routes_across_two_instances_with_no_store() {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::start(&format!("n{i}"), &["--sid-prefix", &format!("n{i}")]))
        .collect();
    let routed: Vec<(SocketAddr, String)> = nodes.iter().map(|n| (n.addr, n.id.clone())).collect();
    // path "/" also puts the nodes' /request endpoint under sticky routing.
    let config = route_config(&routed, "sid_prefix = true\npath = \"/\"");
    let (a, b) = (Limpet::start(&config), Limpet::start(&config));

    for _ in 0..3 {
        let mut alt = Alt::new(&[a.addr(), b.addr()]).await;
        let sid = eio::open(&mut alt).await;
        let (route, _) = sid.split_once('.').expect("a prefixed sid");
        eio::connect_ns(&mut alt, &sid).await;
        for n in 1..=4 {
            assert_eq!(eio::whoami(&mut alt, &sid, n).await, route, "{sid}");
        }
    }
    let l4 = Forwarder::start(vec![a.addr(), b.addr()]).await;
    let r = SioClient::run_to_end(&l4.url(), "--clients 10 --emits 5 --transports polling").await;
    assert_clean(&r, 10, 5);

    // Any sid with a known route goes to that server; an unknown route is placed by the fallback.
    let node_of = |limpet: &Limpet, sid: &str| {
        let addr = limpet.addr();
        let path = format!("/request?sid={sid}");
        async move {
            json(&get(addr, &path).await.text())["node"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    for limpet in [&a, &b] {
        let mut fallback = Vec::new();
        for i in 0..3 {
            assert_eq!(node_of(limpet, &format!("n2.made-up-{i}")).await, "n2");
            fallback.push(node_of(limpet, &format!("zz.made-up-{i}")).await);
        }
        fallback.sort();
        assert_eq!(
            fallback,
            ["n1", "n2", "n3"],
            "round robin places unknown prefixes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_sid_gets_what_any_request_gets_from_a_full_server() {
    let nodes: Vec<Node> = (1..=2)
        .map(|i| Node::start(&format!("n{i}"), &["--sid-prefix", &format!("n{i}")]))
        .collect();
    let mut config = sid_config(&[], "sid_prefix = true\npath = \"/\"");
    for n in &nodes {
        config.push_str(&format!(
            "\n[[upstream.app.server]]\naddr = \"{}\"\nroute = \"{}\"\nmax_conns = 1\n",
            n.addr, n.id
        ));
    }
    let limpet = Limpet::start(&config);
    // n1's one connection is taken by a slow request of one of its sessions.
    let addr = limpet.addr();
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=3000&sid=n1.held").await.status });
    eventually(WAIT, "n1 at its max_conns", || async {
        let active = server_entry(&limpet.status().await, nodes[0].addr)["active"].as_u64();
        (active == Some(1)).then_some(())
    })
    .await;
    // A sid naming n1 (forged or not) is answered as any request no server can take: the node never sees it.
    let r = get(addr, "/request?sid=n1.forged").await;
    assert_eq!(r.status, 502, "{}", r.text());
    // n2 is not full.
    assert_eq!(
        json(&get(addr, "/request?sid=n2.other").await.text())["node"],
        "n2"
    );
    assert_eq!(slow.await.unwrap(), 200);
    // With its slot back, n1 serves its sids again.
    assert_eq!(
        json(&get(addr, "/request?sid=n1.forged").await.text())["node"],
        "n1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_session_ttl_and_key_prefix_to_the_store() {
    let redis = Redis::start();
    let fleet = NodeFleet::start(1, &[]);
    let settings = |prefix: &str, ttl: &str| {
        let sticky = format!(
            "store = \"{}\"\nkey_prefix = \"{prefix}\"\nsession_ttl = \"{ttl}\"",
            redis.url()
        );
        sid_config(&fleet.addrs(), &sticky)
    };
    let limpet = Limpet::start(&settings("one:", "90s"));
    let mut conn = Conn::open(limpet.addr(), [127, 0, 0, 1]).await;
    let first = eio::open(&mut conn).await;
    let ttl = redis.ttl(&format!("one:{first}")).await;
    assert!((31..=90).contains(&ttl), "written with session_ttl: {ttl}");

    let reloads = |n: usize| {
        let logs = limpet.logs();
        async move {
            (logs
                .iter()
                .filter(|l| l.contains("config reloaded"))
                .count()
                >= n)
                .then_some(())
        }
    };
    for (n, prefix, ttl_limit) in [(1, "one:", 30), (2, "two:", 30)] {
        limpet.write_config(&settings(prefix, "30s"));
        limpet.signal("HUP");
        eventually(WAIT, "the reload", || reloads(n)).await;
        let sid = eio::open(&mut conn).await;
        let ttl = redis.ttl(&format!("{prefix}{sid}")).await;
        assert!(
            (1..=ttl_limit).contains(&ttl),
            "reload {n}: {prefix}{sid} expires in {ttl}"
        );
    }
    let m = limpet.metrics().await;
    assert_eq!(
        metric(&m, "limpet_sticky_store_errors_total", &[]),
        0.0,
        "{m}"
    );
}

#[test]
fn a_bad_redis_url_is_a_check_error_with_its_key_path() {
    let servers = ["127.0.0.1:9".parse().unwrap()];
    let (code, out) = check_config(&store_config(&servers, "redis://127.0.0.1:notaport/0"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstream.app.sticky.store: invalid Redis URL"),
        "{out}"
    );
    let (code, out) = check_config(&store_config(&servers, "redis://127.0.0.1:6379/0"));
    assert_eq!(code, 0, "{out}");
}

// ---- an Engine.IO session whose requests alternate between instances ---------------------------------------

/// Raw Engine.IO v4 polling requests sent in turn over one keep-alive connection to each instance, the first to
/// the first instance (A): a session opened on it is opened on A.
struct Alt {
    conns: Vec<Conn>,
    next: usize,
    /// Requests sent to each instance.
    sent: Vec<usize>,
}

impl Alt {
    async fn new(to: &[SocketAddr]) -> Alt {
        let mut conns = Vec::new();
        for addr in to {
            conns.push(Conn::open(*addr, [127, 0, 0, 1]).await);
        }
        Alt {
            sent: vec![0; conns.len()],
            conns,
            next: 0,
        }
    }
}

impl Exchange for Alt {
    async fn send(&mut self, method: &str, target: &str, headers: &str, body: &str) -> Reply {
        let i = self.next % self.conns.len();
        self.next += 1;
        self.sent[i] += 1;
        self.conns[i].send(method, target, headers, body).await
    }
}

// ---- an L4 balancer ---------------------------------------------------------------------------------------

/// A TCP forwarder that sends each new connection to the next target in turn (a DNS/NLB-style spread).
struct Forwarder {
    addr: SocketAddr,
    counts: Arc<Vec<AtomicUsize>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(targets: Vec<SocketAddr>) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
        let seen = counts.clone();
        let accept = tokio::spawn(async move {
            let mut next = 0;
            while let Ok((mut client, _)) = listener.accept().await {
                let i = next % targets.len();
                next += 1;
                seen[i].fetch_add(1, Ordering::Relaxed);
                let target = targets[i];
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder {
            addr,
            counts,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections sent to each target so far.
    fn connections(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

// ---- redis-server -----------------------------------------------------------------------------------------

/// A throwaway `redis-server` on a free loopback port, without persistence; killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a port that was free a moment ago, trying another if it was taken meanwhile.
    fn start() -> Redis {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut redis = Redis { port, child: None };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts redis-server on `self.port` and waits (10 s at most) until it answers PING.
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (Debian package redis-server)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.ping() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL): an outage, not a shutdown.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// `GET key`.
    async fn get(&self, key: &str) -> Option<String> {
        self.query(&["GET", key]).await
    }

    /// `TTL key`, in seconds.
    async fn ttl(&self, key: &str) -> i64 {
        let ttl = self.query(&["TTL", key]).await.expect("an integer");
        ttl.parse().unwrap()
    }

    /// One command: a bulk string or integer reply as text, None for nil.
    async fn query(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(cmd.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let read = async {
            loop {
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "Redis closed");
                reply.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&reply).into_owned();
                if text == "$-1\r\n" {
                    return None;
                }
                if let Some(int) = text.strip_prefix(':') {
                    match int.strip_suffix("\r\n") {
                        Some(int) => return Some(int.to_string()),
                        None => continue,
                    }
                }
                assert!(text.starts_with('$'), "unexpected reply {text:?}");
                if let Some((len, rest)) = text[1..].split_once("\r\n") {
                    let len: usize = len.parse().unwrap();
                    if rest.len() >= len + 2 {
                        return Some(rest[..len].to_string());
                    }
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("Redis answers")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- configs, clients, metrics ----------------------------------------------------------------------------

fn sid_config(servers: &[SocketAddr], sticky: &str) -> String {
    simple_config(
        "sid",
        servers,
        "",
        &format!("[upstream.app.sticky]\nfallback = \"round_robin\"\n{sticky}\n"),
    )
}

fn store_config(servers: &[SocketAddr], url: &str) -> String {
    sid_config(
        servers,
        &format!("store = \"{url}\"\nkey_prefix = \"{KEY_PREFIX}\""),
    )
}

/// A sid config whose servers carry a `route`.
fn route_config(servers: &[(SocketAddr, String)], sticky: &str) -> String {
    let mut s = sid_config(&[], sticky);
    for (addr, route) in servers {
        s.push_str(&format!(
            "\n[[upstream.app.server]]\naddr = \"{addr}\"\nroute = \"{route}\"\n"
        ));
    }
    s
}
