//! The TLS edge, end to end with real TLS clients: limpet terminates TLS (ECDSA and RSA keys, chains, SNI, ALPN
//! `http/1.1`, TLS 1.2 and 1.3 only), reloads certificates on SIGHUP, closes a client that never finishes its
//! handshake, carries `wss://`, and speaks HTTPS to upstreams with `tls = true`. Every certificate is made at test
//! time under a CA that only the test trusts.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A 2048-bit RSA key (PKCS#8) for the RSA leaf: rcgen cannot generate RSA keys with ring. Test only.
const RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDMTn35aUV+Kx7u
ES75QqMr8ee1dPhtjvSwox+Gg8wwc1CKZiC9mkGqZtLKPvsfg8ngDt/cjxC7U5qf
t73BA6VpCA7NebJqE35sg2jTx7swwJmF23j/MsbRH+byJHKSngEMU1no+L5ZREiv
r8o4v1MSOe0sEpSJq9qHghWar26wgYwT1ZfwAzrxXB1aEf8X7i2TWiLBqM6RJBNL
sOWFl6GCMFh21JPThCcLa1Ds7q/l7z2/WyRFNxm9CpcntNVkoH+wPDHYZ8eNV/MQ
FJaz115+Jo5qZFx6jvoRhgYtzENIKLwezauHJ/7zGvJtiddi0c+MV5xg+3uiaHwI
g3fwhoITAgMBAAECggEACJ6jJ/uuB+Wv12F4NuH92mPJX9mAhbbLUgx/zwAOhFjJ
JB2s8fLpJFRUPl4r4CeCQ+a8wSR0E0MyudxZsCQEPYsufLLOuTT7V36v1IePuT3W
/FPHJhUxWC9dYgfxoYfzCV8W4wJjnYaI/oiPIpfH3HP/MqXSCIDsplzxpmYSaHXr
WqwWWTmu7qTR6wYpGO1DZGUQAQOzBsvk71EA0aowUX+w85cqkjUep5tMEPL1/ig7
4XmfGYaAVhwdQme9P/tPTY/0WiGOCNypvPZiwhqQJeg+Zcy+sbyzww+oFaXEQv4r
XFOBw4lhvtsuW6YzHKFwxR+empgW3Nu89EGsQN2cOQKBgQD89Z0RiKjzk14T2SPC
4LOJ4mIfDhRgdbv66REJeeeLtE7G4VFQ0qEYKAzEwXrb6sorQuHaQZMkXQ0axRVG
T6BVsBlEcP+hi2u0h99SnqcwDAMvT+L2zgrcwQcfuG/N3vRQKOUQHstw+Ky/0Fkr
Ga4/2u78wzwtqwBtDgUCbwpxVwKBgQDOwysBa+LrxPiFxLI6ctIsSYIdnlABXYUx
LcN+Ggm1up9T/QNLBhmyU92bDaMlE0nq+p8yNL94JGps4BPJQHbVNCVXr0MZSN8i
U/poPRAflqxe0l4rNSLaZZEImC/u5+o6SeVzaBH/MFJ+pIudTXB2jM0avFQ7o6c4
LgGbI24TpQKBgQDzYh5N0H8+XHwX/MQ7rJcSA48E8jcI2D6Vm8mYpIH0GPfywrfK
W95Dr8UZSk87aRw7o45KwO0h/6WsLBPcIqDR0S1+fHp4o/xtJo3ooF2cDPLDgsmN
TZGF9PM1we9Q1UOcHLzIVdjISXts0rn4jizpo2xuJiqwhedTBjorrUsO4QKBgCGs
FSfhGw6MgHDAjMoKAwJlYkRSkPL3+QX+TvUNZoFrCCGUdeHU94BcOh3TRbt2/bW/
5Qc3Iet9+rsKbw56ah/koyQ5jbLjdDtR89jgAO00C5RRrDZbK/bnTYxZxIyixjmB
6VU3IJ8vjm/Del0+zE7yNUDiZNFloIj8rRRH29hlAoGBANdu6oeqf3i6JRJWvJ7c
5839mWvEcQbrBSVwTZPEsIPh+WIysnf4S/irUDlvKloHhZU4AJbiqgTTi5pSzX9N
54U5D39zLnpgkYnqmk6u9Ah2RadWg6ijfXKvXjDU0s782Yvl4AVbcQfZtvi4mQNL
0T3qe1xqmnSAjK/IKhvG8BB6
-----END PRIVATE KEY-----
";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for one test.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A leaf certificate: the PEM chain limpet serves (leaf first), its key, and the leaf as DER.
struct Leaf {
    chain_pem: String,
    key: KeyPair,
    der: CertificateDer<'static>,
}

impl Ca {
    fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = Ca::params(name).self_signed(&key).unwrap();
        Ca { key, cert }
    }

    fn intermediate(&self, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let cert = Ca::params(name)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Ca { key, cert }
    }

    fn params(name: &str) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p
    }

    /// A leaf for `names` (DNS names or IP addresses) with a fresh ECDSA P-256 key.
    fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_with(names, KeyPair::generate().unwrap())
    }

    fn leaf_with(&self, names: &[&str], key: KeyPair) -> Leaf {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key,
            der: cert.der().clone(),
        }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// Writes a leaf's chain and key as `<name>.crt` / `<name>.key` under `dir`.
fn write_pair(dir: &Path, name: &str, chain_pem: &str, key: &KeyPair) -> (PathBuf, PathBuf) {
    let (cert, keyfile) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, chain_pem).unwrap();
    std::fs::write(&keyfile, key.serialize_pem()).unwrap();
    (cert, keyfile)
}

/// A rustls client trusting only `ca`, offering ALPN `http/1.1`.
fn client(ca: &Ca, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let fut = async {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(config).connect(name, tcp).await
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("TLS connect timed out")
}

/// The leaf certificate the server presented.
fn leaf_of(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One `GET path` with `Host: host` over an established stream.
async fn get_over<S>(stream: S, host: &str, path: &str) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let fut = async {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let (parts, body) = send.send_request(req).await.unwrap().into_parts();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("HTTPS request timed out")
}

fn quoted(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

/// A TLS `[[server]]` on 127.0.0.1:0 for `names` with one location "/" → `upstream`.
fn tls_server(names: &[&str], cert: &Path, key: &Path, upstream: &str, extra: &str) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[server]]\nlisten = [\"127.0.0.1:0\"]\nserver_name = [{}]\ntls = {{ cert = {}, key = {} }}\n{extra}\n\
         [[server.location]]\npath = \"/\"\nproxy_pass = \"{upstream}\"\nconnect_timeout = \"2s\"\n\n",
        names.join(", "),
        quoted(cert),
        quoted(key),
    )
}

/// An `[upstream.NAME]` with `keys` and `servers`.
fn upstream(name: &str, servers: &[SocketAddr], keys: &str) -> String {
    let mut s = format!("[upstream.{name}]\nbalance = \"round_robin\"\n{keys}\n");
    for a in servers {
        s.push_str(&format!("[[upstream.{name}.server]]\naddr = \"{a}\"\n"));
    }
    s.push('\n');
    s
}

/// A TLS listener in front of one plain HTTP backend, with a leaf for `localhost` and 127.0.0.1.
struct Edge {
    ca: Ca,
    leaf: Leaf,
    backend: HttpBackend,
    limpet: Limpet,
    _dir: tempfile::TempDir,
}

impl Edge {
    async fn start(leaf_of: impl FnOnce(&Ca) -> Leaf, server_extra: &str) -> Edge {
        let ca = Ca::root("edge test CA");
        let leaf = leaf_of(&ca);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "edge", &leaf.chain_pem, &leaf.key);
        let backend = HttpBackend::start("b1").await;
        let config = tls_server(&[], &cert, &key, "app", server_extra)
            + &upstream("app", &[backend.addr], "");
        let limpet = Limpet::start(&config);
        Edge {
            ca,
            leaf,
            backend,
            limpet,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_tls_12_and_13_with_alpn_http11() {
    let edge = Edge::start(|ca| ca.leaf(&["localhost", "127.0.0.1"]), "").await;
    for (versions, expected) in [
        (BOTH, ProtocolVersion::TLSv1_3),
        (TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let tls = tls_connect(edge.limpet.addr(), "localhost", client(&edge.ca, versions))
            .await
            .expect("handshake with limpet");
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(expected));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(leaf_of(&tls), edge.leaf.der);
        let resp = get_over(tls, "localhost", "/over-tls").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "b1");
        let seen = edge.backend.last().unwrap();
        assert_eq!(seen.uri, "/over-tls");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_an_rsa_leaf_with_its_intermediate() {
    let root = Ca::root("edge root");
    let intermediate = root.intermediate("edge intermediate");
    let rsa = KeyPair::from_pem(RSA_KEY).unwrap();
    let leaf = intermediate.leaf_with(&["rsa.localhost"], rsa);
    let dir = tempfile::tempdir().unwrap();
    let chain = leaf.chain_pem.clone() + &intermediate.pem();
    let (cert, key) = write_pair(dir.path(), "rsa", &chain, &leaf.key);
    let backend = HttpBackend::start("rsa-backend").await;
    let limpet = Limpet::start(
        &(tls_server(&[], &cert, &key, "app", "") + &upstream("app", &[backend.addr], "")),
    );
    // The client trusts only the root: the handshake needs the intermediate limpet sends.
    let tls = tls_connect(limpet.addr(), "rsa.localhost", client(&root, BOTH))
        .await
        .expect("handshake through the intermediate");
    let chain = tls.get_ref().1.peer_certificates().unwrap().to_vec();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], leaf.der);
    assert_eq!(&chain[1], intermediate.cert.der());
    assert_eq!(
        get_over(tls, "rsa.localhost", "/").await.text(),
        "rsa-backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_certificate_of_each_server() {
    let ca = Ca::root("sni CA");
    let dir = tempfile::tempdir().unwrap();
    let a = ca.leaf(&["a.test", "127.0.0.1"]);
    let b = ca.leaf(&["b.test", "www.b.test"]);
    let (a_cert, a_key) = write_pair(dir.path(), "a", &a.chain_pem, &a.key);
    let (b_cert, b_key) = write_pair(dir.path(), "b", &b.chain_pem, &b.key);
    let (backend_a, backend_b) = (HttpBackend::start("A").await, HttpBackend::start("B").await);
    let config = tls_server(&["a.test"], &a_cert, &a_key, "a", "")
        + &tls_server(&["b.test", "*.b.test"], &b_cert, &b_key, "b", "")
        + &upstream("a", &[backend_a.addr], "")
        + &upstream("b", &[backend_b.addr], "");
    let limpet = Limpet::start(&config);
    let config = client(&ca, BOTH);
    for (sni, leaf, body) in [
        ("a.test", &a, "A"),
        ("b.test", &b, "B"),
        ("www.b.test", &b, "B"),
        // An IP address sends no SNI: the first certificate of the address serves.
        ("127.0.0.1", &a, "A"),
    ] {
        let tls = tls_connect(limpet.addr(), sni, config.clone())
            .await
            .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
        assert_eq!(leaf_of(&tls), leaf.der, "{sni}");
        let host = if sni == "127.0.0.1" { "a.test" } else { sni };
        assert_eq!(get_over(tls, host, "/").await.text(), body, "{sni}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_a_bad_pair_keeps_the_old() {
    let ca = Ca::root("reload CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.leaf(&["localhost"]);
    let (cert, key) = write_pair(dir.path(), "edge", &first.chain_pem, &first.key);
    let backend = HttpBackend::start("b1").await;
    let limpet = Limpet::start(
        &(tls_server(&[], &cert, &key, "app", "") + &upstream("app", &[backend.addr], "")),
    );
    let config = client(&ca, BOTH);
    let tls = tls_connect(limpet.addr(), "localhost", config.clone())
        .await
        .unwrap();
    assert_eq!(leaf_of(&tls), first.der);

    let second = ca.leaf(&["localhost"]);
    write_pair(dir.path(), "edge", &second.chain_pem, &second.key);
    limpet.signal("HUP");
    limpet.wait_log("config reloaded", WAIT).await;
    let tls = tls_connect(limpet.addr(), "localhost", config.clone())
        .await
        .unwrap();
    assert_eq!(
        leaf_of(&tls),
        second.der,
        "new connections get the new certificate"
    );

    // A key that does not match its certificate: the reload fails and the running certificate stays.
    std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    limpet.signal("HUP");
    let line = limpet.wait_log("reload failed", WAIT).await;
    assert!(line.contains("does not match"), "{line}");
    let tls = tls_connect(limpet.addr(), "localhost", config)
        .await
        .unwrap();
    assert_eq!(leaf_of(&tls), second.der);
    assert_eq!(get_over(tls, "localhost", "/").await.text(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_missing_and_mismatched_pairs_and_bad_upstream_tls() {
    let ca = Ca::root("check CA");
    let dir = tempfile::tempdir().unwrap();
    let a = ca.leaf(&["localhost"]);
    let b = ca.leaf(&["localhost"]);
    let (cert, key) = write_pair(dir.path(), "a", &a.chain_pem, &a.key);
    let (_, other_key) = write_pair(dir.path(), "b", &b.chain_pem, &b.key);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let tls_up = |keys: &str| upstream("app", &[backend], &format!("tls = true\n{keys}"));

    let good = tls_server(&[], &cert, &key, "app", "")
        + &tls_up(&format!("tls_ca = {}", quoted(&ca_file)));
    let (code, out) = check_config(&good);
    assert_eq!(code, 0, "{out}");

    let missing = tls_server(&[], &cert, &dir.path().join("absent.key"), "app", "") + &tls_up("");
    let (code, out) = check_config(&missing);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server[0].tls.key") && out.contains("absent.key"),
        "{out}"
    );

    let mismatched = tls_server(&[], &cert, &other_key, "app", "") + &tls_up("");
    let (code, out) = check_config(&mismatched);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("server[0].tls") && out.contains("does not match"),
        "{out}"
    );

    // A CA bundle with no certificate in it (here: a private key), and a server name that is not a name.
    let bad_ca =
        tls_server(&[], &cert, &key, "app", "") + &tls_up(&format!("tls_ca = {}", quoted(&key)));
    let (code, out) = check_config(&bad_ca);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("upstream.app.tls_ca") && out.contains("a.key"),
        "{out}"
    );
    let bad_name = tls_server(&[], &cert, &key, "app", "")
        + &tls_up(&format!(
            "tls_ca = {}\ntls_server_name = \"not a name!\"",
            quoted(&ca_file)
        ));
    let (code, out) = check_config(&bad_name);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("upstream.app.tls_server_name"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_its_hello_is_closed() {
    let edge = Edge::start(
        |ca| ca.leaf(&["localhost"]),
        "client_header_timeout = \"1s\"",
    )
    .await;
    let mut silent = TcpStream::connect(edge.limpet.addr()).await.unwrap();
    let (bytes, closed) = read_until_close(&mut silent, WAIT).await;
    assert!(closed, "limpet keeps a silent TLS client open");
    assert!(bytes.is_empty(), "limpet wrote {bytes:?}");
    assert_eq!(edge.backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_comes_before_the_tls_handshake() {
    let edge = Edge::start(|ca| ca.leaf(&["localhost"]), "proxy_protocol = true").await;
    let mut tcp = TcpStream::connect(edge.limpet.addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.50 127.0.0.1 41000 443\r\n")
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(client(&edge.ca, BOTH))
        .connect(name, tcp)
        .await
        .expect("TLS after the PROXY header");
    assert_eq!(get_over(tls, "localhost", "/behind-l4").await.status, 200);
    let seen = edge.backend.last().unwrap();
    assert_eq!(seen.headers["x-forwarded-for"], "203.0.113.50");
    assert_eq!(seen.headers["x-real-ip"], "203.0.113.50");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
}

/// The PROXY header, the TLS handshake and the first head share one `client_header_timeout` from the connection's
/// start: each within it but together past it, the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_and_tls_handshake_share_one_header_timeout() {
    let edge = Edge::start(
        |ca| ca.leaf(&["localhost"]),
        "proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1\"]\nclient_header_timeout = \"2s\"",
    )
    .await;
    let name = ServerName::try_from("localhost").unwrap();
    // Within the timeout: header at once, handshake at once.
    let mut tcp = TcpStream::connect(edge.limpet.addr()).await.unwrap();
    tcp.write_all(b"PROXY TCP4 203.0.113.50 127.0.0.1 41000 443\r\n")
        .await
        .unwrap();
    let tls = TlsConnector::from(client(&edge.ca, BOTH))
        .connect(name.clone(), tcp)
        .await
        .expect("a prompt handshake");
    assert_eq!(get_over(tls, "localhost", "/prompt").await.status, 200);
    // The header after 1.2 s and the handshake 1.2 s later: each under 2 s, together over.
    let mut tcp = TcpStream::connect(edge.limpet.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    tcp.write_all(b"PROXY TCP4 203.0.113.51 127.0.0.1 41000 443\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = TlsConnector::from(client(&edge.ca, BOTH))
        .connect(name, tcp)
        .await;
    assert!(
        late.is_err(),
        "a handshake finished 2.4 s after the connection's start was accepted"
    );
    assert_eq!(edge.backend.hits(), 1);
}

/// A ClientHello whose highest version is TLS 1.1 (and no supported_versions extension), otherwise acceptable:
/// a suite and a signature scheme rustls supports.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x5a; 32]);
    body.push(0);
    body.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([0x01, 0x00]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pkcs1_sha256.
    body.extend([
        0x00, 0x0a, 0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ]);
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_is_refused_with_a_protocol_version_alert() {
    let edge = Edge::start(|ca| ca.leaf(&["localhost"]), "").await;
    let mut s = TcpStream::connect(edge.limpet.addr()).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let (bytes, closed) = read_until_close(&mut s, WAIT).await;
    assert!(closed, "the connection stays open after an old ClientHello");
    // One alert record: type 21, then level 2 (fatal) and description 70 (protocol_version).
    assert!(bytes.len() >= 7, "{bytes:?}");
    assert_eq!(bytes[0], 21, "{bytes:?}");
    assert_eq!(&bytes[5..7], &[2, 70], "{bytes:?}");
    assert_eq!(edge.backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_limpet() {
    let ca = Ca::root("wss CA");
    let leaf = ca.leaf(&["localhost"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = write_pair(dir.path(), "edge", &leaf.chain_pem, &leaf.key);
    let ws_backend = WsBackend::start().await;
    let limpet = Limpet::start(
        &(tls_server(&[], &cert, &key, "ws", "") + &upstream("ws", &[ws_backend.addr], "")),
    );
    let tls = tls_connect(limpet.addr(), "localhost", client(&ca, BOTH))
        .await
        .unwrap();
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async("wss://localhost/ws", tls),
    )
    .await
    .unwrap()
    .expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), 101);
    for text in ["over wss", "and again"] {
        assert_eq!(echo(&mut ws, text).await, text);
    }
    assert_eq!(ws_backend.accepted.load(Ordering::SeqCst), 1);
}

async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("no echo of {text:?}: {other:?}"),
    }
}

/// What an HTTPS backend answers on each connection.
#[derive(Clone, Copy)]
enum Serve {
    /// HTTP/1.1: its name as the body, the `x-forwarded-proto` it saw in `x-saw-proto`.
    Http,
    /// A WebSocket echo.
    WebSocket,
}

/// A backend that speaks only TLS, with its own certificate.
struct TlsBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    hellos: Arc<Mutex<Vec<Hello>>>,
}

/// The SNI and ALPN of one handshake a backend accepted.
type Hello = (Option<String>, Option<Vec<u8>>);

impl TlsBackend {
    async fn start(name: &'static str, leaf: &Leaf, serve: Serve) -> TlsBackend {
        let key = PrivatePkcs8KeyDer::from(leaf.key.serialize_der());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(BOTH)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der.clone()], key.into())
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let (conns, seen) = (connections.clone(), hellos.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, conns, seen) = (acceptor.clone(), conns.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let c = tls.get_ref().1;
                    let hello = (
                        c.server_name().map(str::to_string),
                        c.alpn_protocol().map(<[u8]>::to_vec),
                    );
                    seen.lock().unwrap().push(hello);
                    match serve {
                        Serve::Http => serve_http(name, tls).await,
                        Serve::WebSocket => serve_ws(tls).await,
                    }
                });
            }
        });
        TlsBackend {
            addr,
            connections,
            hellos,
        }
    }
}

async fn serve_http(name: &'static str, tls: tokio_rustls::server::TlsStream<TcpStream>) {
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
        let proto = req.headers().get("x-forwarded-proto").cloned();
        let mut resp = http::Response::new(Full::new(Bytes::from(name)));
        if let Some(p) = proto {
            resp.headers_mut().insert("x-saw-proto", p);
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

async fn serve_ws(tls: tokio_rustls::server::TlsStream<TcpStream>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// limpet on a plain listener in front of one HTTPS upstream trusting `ca` (`extra` upstream keys).
fn https_upstream_config(backend: SocketAddr, ca_file: &Path, extra: &str) -> String {
    simple_config(
        "round_robin",
        &[backend],
        &format!("tls = true\ntls_ca = {}\n{extra}", quoted(ca_file)),
        "",
    )
}

fn ca_file(dir: &Path, ca: &Ca) -> PathBuf {
    let path = dir.join("upstream-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_verified_by_ip_with_pooled_connections() {
    let ca = Ca::root("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = TlsBackend::start("tls-b1", &ca.leaf(&["127.0.0.1"]), Serve::Http).await;
    let limpet = Limpet::start(&https_upstream_config(
        backend.addr,
        &ca_file(dir.path(), &ca),
        "",
    ));
    for _ in 0..5 {
        let resp = get(limpet.addr(), "/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "tls-b1");
        assert_eq!(resp.headers["x-saw-proto"], "http");
    }
    let (sni, alpn) = backend.hellos.lock().unwrap()[0].clone();
    assert_eq!(sni, None, "an IP address is not sent as SNI");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let opened = backend.connections.load(Ordering::SeqCst);
    assert!(
        opened < 5,
        "keep-alive over TLS: {opened} connections for 5 requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_by_tls_server_name_passes_health_checks() {
    let ca = Ca::root("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(&["node.internal"]);
    let backend = TlsBackend::start("tls-named", &leaf, Serve::Http).await;
    let health =
        "[upstream.app.health_check]\npath = \"/health\"\ninterval = \"200ms\"\ntimeout = \"2s\"\n";
    let config = simple_config(
        "round_robin",
        &[backend.addr],
        &format!(
            "tls = true\ntls_ca = {}\ntls_server_name = \"node.internal\"",
            quoted(&ca_file(dir.path(), &ca))
        ),
        health,
    );
    let limpet = Limpet::start(&config);
    // The server takes traffic only after an active check passed, and checks speak TLS too.
    let resp = eventually(WAIT, "a 200 through the checked HTTPS upstream", || async {
        let r = request(limpet.addr(), "GET", "/", &[], "").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(resp.text(), "tls-named");
    let hellos = backend.hellos.lock().unwrap().clone();
    assert!(hellos
        .iter()
        .all(|(sni, _)| sni.as_deref() == Some("node.internal")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_an_untrusted_certificate_is_a_502() {
    let trusted = Ca::root("the CA limpet trusts");
    let other = Ca::root("some other CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = TlsBackend::start("impostor", &other.leaf(&["127.0.0.1"]), Serve::Http).await;
    let limpet = Limpet::start(&https_upstream_config(
        backend.addr,
        &ca_file(dir.path(), &trusted),
        "",
    ));
    let resp = get(limpet.addr(), "/").await;
    assert_eq!(resp.status, 502);
    assert_ne!(resp.text(), "impostor");
    limpet.wait_log("TLS handshake failed", WAIT).await;
    assert_eq!(backend.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_https_upstream() {
    let ca = Ca::root("upstream CA");
    let dir = tempfile::tempdir().unwrap();
    let backend = TlsBackend::start("ws", &ca.leaf(&["127.0.0.1"]), Serve::WebSocket).await;
    let limpet = Limpet::start(&https_upstream_config(
        backend.addr,
        &ca_file(dir.path(), &ca),
        "",
    ));
    let mut ws = ws_connect(limpet.addr(), "/ws").await;
    for text in ["to a TLS upstream", "twice"] {
        assert_eq!(echo(&mut ws, text).await, text);
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}
