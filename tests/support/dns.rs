//! A real DNS server for membership tests: dnsmasq on a loopback port, answering from a hosts file that the test
//! rewrites (then SIGHUP: dnsmasq re-reads it) and from SRV records given at start. TTLs are 1 s. A name under
//! `.test` with no record does not exist; a name elsewhere with no record is refused.

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One SRV record: `name` → `target:port` at `priority` with `weight`.
pub struct Srv<'a> {
    pub name: &'a str,
    pub target: &'a str,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    version: std::cell::Cell<u32>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (name, address) and `srv`, and waits (10 s at most) until it listens.
    pub fn start(hosts: &[(&str, IpAddr)], srv: &[Srv<'_>]) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        // dnsmasq drops its privileges when started as root: let it read the hosts directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let d_hosts = dir.path().join("hosts");
        let port = free_udp_port();
        let mut cmd = Command::new(dnsmasq_bin());
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-negcache",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local-ttl=1",
            // Names under .test are its own: one it has no record for does not exist (NXDOMAIN). Others it
            // refuses (REFUSED), as a resolver with nowhere to ask does.
            "--local=/test/",
            "--pid-file=",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", d_hosts.display()));
        for r in srv {
            cmd.arg(format!(
                "--srv-host={},{},{},{},{}",
                r.name, r.target, r.port, r.priority, r.weight
            ));
        }
        let d = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            dir,
            version: std::cell::Cell::new(0),
        };
        d.write_hosts(hosts);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq (Debian package dnsmasq-base)");
        let mut d = d;
        d.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&d.addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not listen on {}",
                d.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Replaces every host record: the hosts file is replaced whole, then dnsmasq re-reads it (SIGHUP).
    pub fn set_hosts(&self, hosts: &[(&str, IpAddr)]) {
        self.write_hosts(hosts);
        self.signal("HUP");
    }

    fn write_hosts(&self, hosts: &[(&str, IpAddr)]) {
        let text: String = hosts
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        let v = self.version.get() + 1;
        self.version.set(v);
        let tmp = self.dir.path().join(format!("hosts.{v}"));
        std::fs::write(&tmp, text).expect("write hosts");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::rename(&tmp, self.dir.path().join("hosts")).expect("move hosts");
    }

    /// Stops answering (SIGSTOP) until `resume`: queries time out, as in an outage.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// dnsmasq lives in /usr/sbin, which a non-root PATH may lack.
fn dnsmasq_bin() -> PathBuf {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("dnsmasq"))
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_udp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A port free on every one of `ips` (for a name whose records all share one port).
pub fn port_free_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}
