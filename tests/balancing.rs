//! The balancing methods end to end over HTTP: smooth weighted round robin, least_conn against held requests,
//! nginx-compatible ip_hash by client address, and consistent hashing on a request argument.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

const WAIT: Duration = Duration::from_secs(10);

/// `GET path` from a client socket bound to `source` (any 127.x address works on Linux): the backend's name.
async fn who_from(source: IpAddr, addr: SocketAddr, path: &str) -> String {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let resp = read_response(&mut s, WAIT).await.expect("a response");
    assert_eq!(status_of(&resp), 200, "{resp}");
    resp.split("\r\n\r\n").nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights_in_nginx_smooth_order() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = InProcess::start(&servers_config(
        "round_robin",
        "",
        &[
            (b[0].addr, "weight = 5"),
            (b[1].addr, "weight = 1"),
            (b[2].addr, "weight = 1"),
        ],
    ));
    let mut order = Vec::new();
    for i in 0..70 {
        order.push(who(limpet.addr(), &format!("/{i}")).await);
    }
    // nginx's smooth weighted round robin for 5,1,1 repeats a a b a c a a.
    let period = ["a", "a", "b", "a", "c", "a", "a"];
    let expected: Vec<&str> = period.iter().cycle().take(70).copied().collect();
    assert_eq!(order, expected);
    assert_eq!((b[0].hits(), b[1].hits(), b[2].hits()), (50, 10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_with_equal_weights_alternates() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = InProcess::start(&servers_config(
        "round_robin",
        "",
        &[(b[0].addr, ""), (b[1].addr, ""), (b[2].addr, "")],
    ));
    for i in 0..30 {
        who(limpet.addr(), &format!("/{i}")).await;
    }
    assert_eq!((b[0].hits(), b[1].hits(), b[2].hits()), (10, 10, 10));
}

/// Two requests held open on two servers: every new request goes to the third, idle one. Once the held requests
/// are abandoned by their clients, their servers take traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_prefers_the_idle_server() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = InProcess::start(&servers_config(
        "least_conn",
        "",
        &[(b[0].addr, ""), (b[1].addr, ""), (b[2].addr, "")],
    ));
    let addr = limpet.addr();
    let hits = |b: &[HttpBackend]| b.iter().map(|x| x.hits()).collect::<Vec<_>>();
    let mut held = Vec::new();
    for n in 1..=2 {
        held.push(tokio::spawn(async move { get(addr, "/hang").await }));
        eventually(WAIT, "the held request at a backend", || {
            let total: usize = hits(&b).iter().sum();
            async move { (total == n).then_some(()) }
        })
        .await;
    }
    let busy = hits(&b);
    assert_eq!(busy.iter().filter(|&&h| h == 1).count(), 2, "{busy:?}");
    let idle = busy.iter().position(|&h| h == 0).unwrap();
    for i in 0..10 {
        assert_eq!(
            who(addr, &format!("/q{i}")).await,
            b[idle].name,
            "request {i} went to a busy server"
        );
    }
    assert_eq!(b[idle].hits(), 10);
    for h in &held {
        h.abort();
    }
    // The held requests' in-flight counts end with their clients; the other servers are picked again.
    let idle_name = b[idle].name.clone();
    let again = eventually(WAIT, "a formerly busy server to be picked", || {
        let idle_name = idle_name.clone();
        async move {
            let name = who(addr, "/after").await;
            (name != idle_name).then_some(name)
        }
    })
    .await;
    assert!(["a", "b", "c"].contains(&again.as_str()));
}

/// nginx's ip_hash, written out: the first three octets through `hash = (hash * 113 + byte) % 6271` from 89, then
/// the weight span holding `hash % total`.
fn nginx_ip_hash(ip: [u8; 4], weights: &[u64]) -> usize {
    let hash = ip[..3]
        .iter()
        .fold(89u64, |h, &b| (h * 113 + u64::from(b)) % 6271);
    let mut w = hash % weights.iter().sum::<u64>();
    for (i, &weight) in weights.iter().enumerate() {
        if w < weight {
            return i;
        }
        w -= weight;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_follows_nginx_mapping_by_client_address() {
    let b = backends(&["a", "b", "c"]).await;
    let weights = [1u64, 2, 3];
    let limpet = InProcess::start(&servers_config(
        "ip_hash",
        "",
        &[
            (b[0].addr, "weight = 1"),
            (b[1].addr, "weight = 2"),
            (b[2].addr, "weight = 3"),
        ],
    ));
    let sources: [[u8; 4]; 8] = [
        [127, 0, 0, 2],
        [127, 1, 0, 3],
        [127, 2, 0, 1],
        [127, 3, 7, 1],
        [127, 9, 9, 9],
        [127, 10, 0, 1],
        [127, 200, 1, 1],
        [127, 255, 255, 1],
    ];
    let mut seen = HashSet::new();
    for src in sources {
        let want = &b[nginx_ip_hash(src, &weights)].name;
        let ip = IpAddr::from(src);
        for i in 0..3 {
            let got = who_from(ip, limpet.addr(), &format!("/{i}")).await;
            assert_eq!(&got, want, "client {ip}");
        }
        seen.insert(want.clone());
        let last = b.iter().find(|x| &x.name == want).unwrap().last().unwrap();
        assert_eq!(last.headers["x-forwarded-for"], ip.to_string());
    }
    assert!(seen.len() >= 2, "the sources should cover several servers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_keeps_a_client_and_its_slash_24_on_one_server() {
    let b = backends(&["a", "b", "c"]).await;
    let limpet = InProcess::start(&servers_config(
        "ip_hash",
        "",
        &[(b[0].addr, ""), (b[1].addr, ""), (b[2].addr, "")],
    ));
    // 127.0.0.x and 127.1.0.x: nginx puts them on servers 2 and 1 of three.
    assert_eq!(nginx_ip_hash([127, 0, 0, 2], &[1, 1, 1]), 2);
    assert_eq!(nginx_ip_hash([127, 1, 0, 3], &[1, 1, 1]), 1);
    for i in 0..10 {
        assert_eq!(who(limpet.addr(), &format!("/{i}")).await, "c");
    }
    for host in [2u8, 7, 250] {
        let ip = IpAddr::from([127, 0, 0, host]);
        assert_eq!(who_from(ip, limpet.addr(), "/").await, "c", "{ip}");
    }
    for host in [3u8, 9] {
        let ip = IpAddr::from([127, 1, 0, host]);
        assert_eq!(who_from(ip, limpet.addr(), "/").await, "b", "{ip}");
    }
    assert_eq!(b[0].hits(), 0);
}

/// `hash_key = "$arg_user"`: each user sticks to one server; marking one server down moves only its users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_an_argument_sticks_per_key_and_is_consistent() {
    let b = backends(&["a", "b", "c"]).await;
    let servers = |down: &'static str| vec![(b[0].addr, ""), (b[1].addr, ""), (b[2].addr, down)];
    let keys = "hash_key = \"$arg_user\"";
    let limpet = InProcess::start(&servers_config("hash", keys, &servers("")));
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let mut placed = HashMap::new();
    for u in &users {
        let first = who(limpet.addr(), &format!("/?user={u}")).await;
        for path in [format!("/x?user={u}"), format!("/y?a=1&user={u}&b=2")] {
            assert_eq!(who(limpet.addr(), &path).await, first, "{path}");
        }
        placed.insert(u.clone(), first);
    }
    let used: HashSet<&String> = placed.values().collect();
    assert_eq!(
        used.len(),
        3,
        "30 keys should reach all three servers: {placed:?}"
    );
    drop(limpet);

    let limpet = InProcess::start(&servers_config("hash", keys, &servers("down = true")));
    let before_c = b[2].hits();
    for u in &users {
        let now = who(limpet.addr(), &format!("/?user={u}")).await;
        if placed[u] == "c" {
            assert_ne!(now, "c", "{u}");
        } else {
            assert_eq!(now, placed[u], "{u} moved though its server is up");
        }
    }
    assert_eq!(b[2].hits(), before_c, "a down server took requests");
}
