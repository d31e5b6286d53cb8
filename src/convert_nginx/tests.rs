use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use toml_edit::{value, DocumentMut, Item};

use super::values::{duration, size};
use super::*;
use proptest::prelude::*;
use toml::Value;

/// The Socket.IO docs' "Using multiple nodes" nginx config (ip_hash variant).
const SOCKET_IO_NODES: &str = r#"
http {
  server {
    listen 3000;
    server_name io.yourhost.com;

    location / {
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header Host $host;

      proxy_pass http://nodes;

      # enable WebSockets
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
    }
  }

  upstream nodes {
    # enable sticky session based on IP
    ip_hash;

    server app01:3000;
    server app02:3000;
    server app03:3000;
  }
}
"#;

/// The nginx WebSocket proxying doc's example, without its `...` placeholder.
const NGINX_WEBSOCKET: &str = r#"
http {
    map $http_upgrade $connection_upgrade {
        default upgrade;
        ''      close;
    }

    server {
        location /chat/ {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }
    }
}
"#;

/// [`SOCKET_IO_NODES`] with the docs' `hash` line instead of `ip_hash`.
fn hash_variant_conf() -> String {
    SOCKET_IO_NODES.replace("ip_hash;", "hash $remote_addr consistent;")
}

/// A proxy with no upstream block: `proxy_pass` to bare addresses.
const BARE_PROXY_PASS: &str = "server { listen 80; root /var/www;
            location /socket.io/ { proxy_pass http://localhost:3000; }
            location /api/ { proxy_pass http://localhost:3000/api/; }
            location /s/ { proxy_pass https://[::1]; } }";

/// Most of what limpet maps, and much it does not.
const FULL_MAPPING: &str = r#"
upstream io {
    least_conn;
    keepalive 32;
    zone io 64k;
    server 10.0.0.1:3000 weight=5 max_fails=3 fail_timeout=1m max_conns=100;
    server 10.0.0.2 backup slow_start=30s;
    server 10.0.0.3:3000 down;
    server unix:/tmp/io.sock;
}
upstream cache { hash $request_uri consistent; server 10.0.1.1:80; }
server {
    listen 80;
    listen [::]:443 ssl http2;
    listen 8443 ssl proxy_protocol;
    server_name example.com *.example.com _;
    ssl_certificate /etc/ssl/example.pem;
    ssl_certificate_key "/etc/ssl/example.key";
    set_real_ip_from 10.0.0.0/8;
    proxy_read_timeout 90;
    proxy_set_header X-Team "edge ops";
    client_max_body_size 10M;
    location /socket.io/ {
        proxy_pass http://io;
        proxy_connect_timeout 500ms;
        proxy_buffering off;
    }
    location = /health { proxy_pass http://cache; proxy_set_header X-Only yes; proxy_read_timeout 1m30s; }
    location ~ \.php$ { proxy_pass http://io; }
    location /static/ { root /srv; }
}
"#;

/// Quotes, comments, variables, odd and repeated names.
const QUOTING: &str = "server { listen 127.0.0.1:8080; # comment ; {\n location '/a b' {
            proxy_pass http://up; proxy_set_header \"X-Q\" 'say \"hi\";'; } }
            upstream up { server ${host}x:1; }
            upstream io.nodes { server a:1; }
            server { listen 81; listen 0.0.0.0:81; location / { proxy_pass http://io.nodes; } }
            upstream io.nodes { server b:1; }";

/// A Socket.IO fleet behind one nginx: weighted servers and a backup, HTTP and HTTPS, a WebSocket location.
const SOCKET_IO_CLUSTER: &str = r#"
user nginx;
events { worker_connections 4096; }
http {
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    proxy_read_timeout 75s;

    upstream socketio_nodes {
        ip_hash;
        keepalive 16;
        server 10.0.1.11:3000 weight=3 max_fails=3 fail_timeout=30s;
        server 10.0.1.12:3000 weight=2 max_fails=3 fail_timeout=30s;
        server 10.0.1.13:3000 max_fails=2;
        server 10.0.1.14:3000 backup;
    }

    server {
        listen 80;
        listen 443 ssl;
        server_name chat.example.com;
        ssl_certificate     /etc/nginx/certs/chat.crt;
        ssl_certificate_key /etc/nginx/certs/chat.key;

        location / {
            proxy_pass http://socketio_nodes;
            proxy_set_header Host $host;
        }

        location /socket.io/ {
            proxy_pass http://socketio_nodes;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-App "chat";
            proxy_read_timeout 1h;
        }
    }
}
"#;

/// Every input above.
fn inputs() -> Vec<String> {
    let fixed = [
        SOCKET_IO_NODES,
        NGINX_WEBSOCKET,
        BARE_PROXY_PASS,
        FULL_MAPPING,
        QUOTING,
        SOCKET_IO_CLUSTER,
    ];
    let mut all: Vec<String> = fixed.map(String::from).into();
    all.push(hash_variant_conf());
    all
}

fn convert_ok(conf: &str) -> (Value, Vec<String>) {
    let c = convert(conf).unwrap();
    let value = toml::from_str::<Value>(&c.toml).unwrap_or_else(|e| panic!("{e}\n{}", c.toml));
    (value, c.unmapped)
}

/// The value at a dotted path (`server.0.listen`); a missing key is `false`.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        let next = match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        };
        next.unwrap_or(&Value::Boolean(false))
    })
}

fn text<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path}: {:?}", at(v, path)))
}

fn texts<'a>(v: &'a Value, path: &str) -> Vec<&'a str> {
    at(v, path)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

fn assert_notes(notes: &[String], prefixes: &[&str]) {
    for prefix in prefixes {
        assert!(
            notes.iter().any(|n| n.starts_with(prefix)),
            "{prefix}\n{notes:#?}"
        );
    }
}

#[test]
fn socket_io_multiple_nodes() {
    let (v, notes) = convert_ok(SOCKET_IO_NODES);
    assert_eq!(texts(&v, "server.0.listen"), ["0.0.0.0:3000"]);
    assert_eq!(texts(&v, "server.0.server_name"), ["io.yourhost.com"]);
    assert_eq!(text(&v, "server.0.location.0.path"), "/");
    assert_eq!(text(&v, "server.0.location.0.proxy_pass"), "nodes");
    assert!(at(&v, "server.0.location.0").get("set_header").is_none());
    assert_eq!(text(&v, "upstream.nodes.balance"), "ip_hash");
    let addrs: Vec<_> = (0..3)
        .map(|i| text(&v, &format!("upstream.nodes.server.{i}.addr")))
        .collect();
    assert_eq!(addrs, ["app01:3000", "app02:3000", "app03:3000"]);
    assert_eq!(
        at(&v, "upstream.nodes.server").as_array().map(Vec::len),
        Some(3)
    );
    assert_notes(
        &notes,
        &[
            "line 8: proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for (limpet sets",
            "line 9: proxy_set_header Host $host (limpet sets",
            "line 14: proxy_http_version 1.1 (",
            "line 15: proxy_set_header Upgrade $http_upgrade (limpet sets",
            "line 16: proxy_set_header Connection upgrade (limpet sets",
        ],
    );
    assert_eq!(notes.len(), 5, "{notes:#?}");
    assert!(convert(SOCKET_IO_NODES)
        .unwrap()
        .toml
        .contains("balance = \"sid\""));
}

#[test]
fn socket_io_hash_variant() {
    let (v, _) = convert_ok(&hash_variant_conf());
    assert_eq!(text(&v, "upstream.nodes.balance"), "hash");
    assert_eq!(text(&v, "upstream.nodes.hash_key"), "$remote_addr");
}

#[test]
fn nginx_websocket_example() {
    let (v, notes) = convert_ok(NGINX_WEBSOCKET);
    assert_eq!(texts(&v, "server.0.listen"), ["0.0.0.0:80"]);
    assert_eq!(text(&v, "server.0.location.0.path"), "/chat/");
    assert_eq!(text(&v, "server.0.location.0.proxy_pass"), "backend");
    assert_eq!(text(&v, "upstream.backend.balance"), "round_robin");
    assert_eq!(text(&v, "upstream.backend.server.0.addr"), "backend:80");
    assert_notes(
        &notes,
        &[
            "line 3: map $http_upgrade $connection_upgrade { … } (limpet handles",
            "line 8: server { … } (no listen",
            "line 13: proxy_set_header Connection $connection_upgrade (limpet sets",
        ],
    );
}

#[test]
fn http2_maps_to_alpn_by_default_h2c_on_plaintext_and_http2_off() {
    let conf = "upstream io { server 10.0.0.1:3000; }\n\
        server { listen 80 http2; listen 443 ssl http2; ssl_certificate /c.pem; ssl_certificate_key /k.pem;\n\
        location / { proxy_pass http://io; } }\n\
        server { listen 8443 ssl; http2 off; ssl_certificate /c.pem; ssl_certificate_key /k.pem;\n\
        location / { proxy_pass http://io; } }\n";
    let (v, notes) = convert_ok(conf);
    assert_eq!(texts(&v, "server.0.listen"), ["0.0.0.0:80"]);
    assert_eq!(at(&v, "server.0.h2c").as_bool(), Some(true));
    assert_eq!(texts(&v, "server.1.listen"), ["0.0.0.0:443"]);
    // On TLS, HTTP/2 by ALPN is the default: nothing to write.
    assert!(v["server"][1].get("h2c").is_none(), "{v}");
    assert!(v["server"][1].get("http2").is_none(), "{v}");
    assert_eq!(
        v["server"][2].get("http2").and_then(Value::as_bool),
        Some(false)
    );
    assert!(!notes.iter().any(|n| n.contains("http2")), "{notes:#?}");
}

#[test]
fn bare_proxy_pass_synthesizes_one_upstream_per_address() {
    let (v, notes) = convert_ok(BARE_PROXY_PASS);
    assert_eq!(text(&v, "server.0.location.0.proxy_pass"), "localhost_3000");
    assert_eq!(text(&v, "server.0.location.1.proxy_pass"), "localhost_3000");
    assert_eq!(text(&v, "server.0.location.2.proxy_pass"), "___1_");
    assert_eq!(text(&v, "upstream.___1_.server.0.addr"), "[::1]:443");
    assert_eq!(at(&v, "upstream.___1_.tls").as_bool(), Some(true));
    assert_eq!(at(&v, "upstream").as_table().map(|t| t.len()), Some(2));
    assert_notes(&notes, &["line 1: root /var/www (no limpet equivalent)"]);
    assert!(!notes.iter().any(|n| n.contains("URI part")), "{notes:#?}");
}

#[test]
fn full_mapping() {
    let (v, notes) = convert_ok(FULL_MAPPING);
    assert_eq!(
        at(&v, "server").as_array().map(Vec::len),
        Some(2),
        "plain + TLS"
    );
    assert_eq!(texts(&v, "server.0.listen"), ["0.0.0.0:80"]);
    assert!(at(&v, "server.0").get("tls").is_none());
    assert_eq!(texts(&v, "server.1.listen"), ["[::]:443", "0.0.0.0:8443"]);
    assert_eq!(text(&v, "server.1.tls.key"), "/etc/ssl/example.key");
    assert_eq!(at(&v, "server.1.proxy_protocol").as_bool(), Some(true));
    assert_eq!(
        texts(&v, "server.0.server_name"),
        ["example.com", "*.example.com"]
    );
    assert_eq!(texts(&v, "server.0.trusted_proxies"), ["10.0.0.0/8"]);
    assert_eq!(
        at(&v, "server.1.location").as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(text(&v, "server.1.location.0.read_timeout"), "90s");
    assert_eq!(text(&v, "server.1.location.0.connect_timeout"), "500ms");
    assert_eq!(
        text(&v, "server.1.location.0.set_header.X-Team"),
        "edge ops"
    );
    assert_eq!(text(&v, "server.1.location.0.client_max_body_size"), "10m");
    assert_eq!(text(&v, "server.1.location.1.path"), "/health");
    assert_eq!(text(&v, "server.1.location.1.read_timeout"), "90s");
    let headers = at(&v, "server.1.location.1.set_header");
    assert!(
        headers.get("X-Team").is_none(),
        "nginx does not merge header lists"
    );
    assert_eq!(text(&v, "upstream.io.balance"), "least_conn");
    assert_eq!(at(&v, "upstream.io.keepalive").as_integer(), Some(32));
    let first = at(&v, "upstream.io.server.0");
    let ints = ["weight", "max_fails", "max_conns"].map(|k| first[k].as_integer());
    assert_eq!(ints, [Some(5), Some(3), Some(100)]);
    assert_eq!(text(first, "fail_timeout"), "60s");
    assert_eq!(text(&v, "upstream.io.server.1.addr"), "10.0.0.2:80");
    assert_eq!(at(&v, "upstream.io.server.1.backup").as_bool(), Some(true));
    assert_eq!(at(&v, "upstream.io.server.2.down").as_bool(), Some(true));
    assert_eq!(
        at(&v, "upstream.io.server").as_array().map(Vec::len),
        Some(3)
    );
    assert_eq!(text(&v, "upstream.cache.balance"), "round_robin");
    assert_notes(
        &notes,
        &[
            "line 5: zone io 64k (",
            "line 7: server 10.0.0.2 backup slow_start=30s (parameter slow_start=30s not",
            "line 9: server unix:/tmp/io.sock (",
            "line 11: hash $request_uri consistent (limpet hashes only",
            "line 26: proxy_buffering off (",
            "line 28: location = /health { … } (exact match",
            "line 29: location ~ \\.php$ { … } (",
            "line 30: location /static/ { … } (no proxy_pass",
            "line 30: root /srv (",
        ],
    );
}

#[test]
fn quoting_comments_and_variables() {
    let (v, notes) = convert_ok(QUOTING);
    assert_eq!(texts(&v, "server.0.listen"), ["127.0.0.1:8080"]);
    assert_eq!(text(&v, "server.0.location.0.path"), "/a b");
    assert_eq!(
        text(&v, "server.0.location.0.set_header.X-Q"),
        "say \"hi\";"
    );
    assert_eq!(text(&v, "upstream.up.server.0.addr"), "${host}x:1");
    assert_eq!(texts(&v, "server.1.listen"), ["0.0.0.0:81"]);
    assert_eq!(text(&v, "server.1.location.0.proxy_pass"), "io_nodes");
    assert_eq!(text(&v, "upstream.io_nodes.server.0.addr"), "a:1");
    assert_notes(
        &notes,
        &["line 5: upstream io.nodes { … } (renamed io_nodes:"],
    );
    assert_notes(
        &notes,
        &["line 7: upstream io.nodes { … } (duplicate upstream"],
    );
    assert_eq!(notes.len(), 2, "{notes:#?}");
}

#[test]
fn output_reads_as_written() {
    let expected = r#"# Converted from nginx by `limpet convert-nginx`.
# Review it, and run `limpet --check` on it, before use.

[[server]]
listen = ["0.0.0.0:3000"]
server_name = ["io.yourhost.com"]

[[server.location]]
path = "/"
proxy_pass = "nodes"

[upstream.nodes]
# Socket.IO: balance = "sid" (with [upstream.nodes.sticky]) keeps each
# Engine.IO session on its node without relying on the client address.
balance = "ip_hash"

[[upstream.nodes.server]]
addr = "app01:3000"

[[upstream.nodes.server]]
addr = "app02:3000"

[[upstream.nodes.server]]
addr = "app03:3000"
"#;
    assert_eq!(convert(SOCKET_IO_NODES).unwrap().toml, expected);
}

#[test]
fn socket_io_cluster() {
    let (v, notes) = convert_ok(SOCKET_IO_CLUSTER);
    assert_eq!(texts(&v, "server.0.listen"), ["0.0.0.0:80"]);
    assert!(at(&v, "server.0").get("tls").is_none());
    assert_eq!(texts(&v, "server.1.listen"), ["0.0.0.0:443"]);
    assert_eq!(text(&v, "server.1.tls.cert"), "/etc/nginx/certs/chat.crt");
    assert_eq!(text(&v, "server.1.tls.key"), "/etc/nginx/certs/chat.key");
    for s in ["server.0", "server.1"] {
        assert_eq!(texts(&v, &format!("{s}.server_name")), ["chat.example.com"]);
        let location = |i: usize, key: &str| format!("{s}.location.{i}.{key}");
        assert_eq!(text(&v, &location(0, "path")), "/");
        assert_eq!(text(&v, &location(0, "read_timeout")), "75s");
        assert_eq!(text(&v, &location(1, "path")), "/socket.io/");
        assert_eq!(text(&v, &location(1, "proxy_pass")), "socketio_nodes");
        assert_eq!(text(&v, &location(1, "read_timeout")), "3600s");
        assert_eq!(text(&v, &location(1, "set_header.X-App")), "chat");
    }
    assert_eq!(text(&v, "upstream.socketio_nodes.balance"), "ip_hash");
    assert_eq!(
        at(&v, "upstream.socketio_nodes.keepalive").as_integer(),
        Some(16)
    );
    let server = |i: usize, key: &str| at(&v, &format!("upstream.socketio_nodes.server.{i}.{key}"));
    let weights = [0, 1, 2].map(|i| server(i, "weight").as_integer());
    assert_eq!(weights, [Some(3), Some(2), None]);
    let max_fails = [0, 1, 2].map(|i| server(i, "max_fails").as_integer());
    assert_eq!(max_fails, [Some(3), Some(3), Some(2)]);
    assert_eq!(server(0, "fail_timeout").as_str(), Some("30s"));
    assert_eq!(server(3, "addr").as_str(), Some("10.0.1.14:3000"));
    assert_eq!(server(3, "backup").as_bool(), Some(true));
    assert_notes(
        &notes,
        &[
            "line 2: user nginx (no limpet equivalent)",
            "line 3: events { … } (",
            "line 5: map $http_upgrade $connection_upgrade { … } (limpet handles",
            "line 26: proxy_set_header Host $host (limpet sets",
            "line 31: proxy_http_version 1.1 (",
            "line 32: proxy_set_header Upgrade $http_upgrade (limpet sets",
            "line 33: proxy_set_header Connection $connection_upgrade (limpet sets",
        ],
    );
    assert_eq!(notes.len(), 7, "{notes:#?}");
}

/// `toml` made checkable offline: each upstream host name that is not an IP address becomes a loopback
/// address of its own (port kept), and every TLS file is `tls_file`. limpet's parser resolves names and
/// checks that files exist; unit tests use neither DNS nor the machine's certificates.
fn offline(toml: &str, tls_file: &Path) -> String {
    let mut doc: DocumentMut = toml.parse().unwrap();
    let servers = doc.get_mut("server").and_then(Item::as_array_of_tables_mut);
    for tls in servers
        .into_iter()
        .flat_map(|s| s.iter_mut())
        .filter_map(|s| s.get_mut("tls"))
    {
        for key in ["cert", "key"] {
            tls[key] = value(tls_file.display().to_string());
        }
    }
    let mut hosts: HashMap<String, usize> = HashMap::new();
    let upstreams = doc.get_mut("upstream").and_then(Item::as_table_mut);
    for (_, upstream) in upstreams.into_iter().flat_map(|t| t.iter_mut()) {
        let servers = upstream
            .get_mut("server")
            .and_then(Item::as_array_of_tables_mut);
        for server in servers.into_iter().flat_map(|s| s.iter_mut()) {
            let addr = server["addr"].as_str().unwrap().to_owned();
            if addr.parse::<SocketAddr>().is_ok() {
                continue;
            }
            let (host, port) = addr.rsplit_once(':').unwrap();
            let next = hosts.len() + 1;
            let n = *hosts.entry(host.to_owned()).or_insert(next);
            server["addr"] = value(format!("127.0.0.{n}:{port}"));
        }
    }
    doc.to_string()
}

#[test]
fn every_conversion_is_a_limpet_config() {
    let tls_file = tempfile::NamedTempFile::new().unwrap();
    for conf in inputs() {
        let converted = convert(&conf).unwrap().toml;
        let text = offline(&converted, tls_file.path());
        if let Err(problems) = crate::config::parse(&text) {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            panic!("{problems:#?}\n{text}");
        }
    }
}

#[test]
fn syntax_errors_have_line_numbers() {
    let err = |conf: &str| match convert(conf) {
        Err(ConvertError::Syntax { line, .. }) => line,
        other => panic!("{other:?}"),
    };
    assert_eq!(err("http {\n server {\n listen 80;\n }\n"), 1);
    assert_eq!(err("server {\n}\n}\n"), 3);
    assert_eq!(err("server {\n listen 80\n }"), 2);
    assert_eq!(err("server {\n ;\n}"), 2);
    assert_eq!(err("\n\n{ }"), 3);
    assert_eq!(err("server {\n return 200 \"oops;\n}\n"), 2);
    assert_eq!(err("server { listen \"80\"x; }"), 1);
    assert_eq!(convert("# nothing\nevents {}\n"), Err(ConvertError::Empty));
}

#[test]
fn durations_and_sizes() {
    for (nginx, limpet) in [
        ("60", "60s"),
        ("1m", "60s"),
        ("500ms", "500ms"),
        ("1m30s", "90s"),
    ] {
        assert_eq!(duration(nginx).as_deref(), Some(limpet), "{nginx}");
    }
    assert_eq!(duration("1h 1ms").as_deref(), Some("3600001ms"));
    for bad in ["", "s", "1x", "-1s", "1.5s", "99999999999999999999y"] {
        assert_eq!(duration(bad), None, "{bad}");
    }
    assert_eq!(
        (size("1M").as_deref(), size("0").as_deref()),
        (Some("1m"), Some("0"))
    );
    assert_eq!((size("1kk"), size("m")), (None, None));
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(conf in "[a-z0-9 ;{}#\"'$\\\\\n:/.=_-]{0,200}") {
        if let Ok(c) = convert(&conf) {
            prop_assert!(toml::from_str::<Value>(&c.toml).is_ok(), "{}", c.toml);
        }
    }
}
