//! `server` blocks: `listen`, `server_name`, TLS files and `location`s.

use std::mem::take;

use toml_edit::{value, Array, InlineTable, Item, Table};

use super::convert::{copy_keys, is_inherited, location_keys, over, Converter, SERVER_KEYS};
use super::emit::Server;
use super::syntax::Directive;
use super::values::with_port;

/// What one nginx `server` block says, before it becomes limpet servers.
#[derive(Default)]
struct Parts {
    plain: Vec<String>,
    secure: Vec<String>,
    names: Vec<String>,
    locations: Vec<Table>,
    ssl_on: bool,
    proxy_protocol: bool,
    /// HTTP/2 on a plaintext listen (`listen … http2` without `ssl`, or `http2 on`): limpet's `h2c`.
    h2c: bool,
    /// `http2 off`: TLS listens offer HTTP/1.1 only.
    http2_off: bool,
}

/// A `listen` line: where, and whether it takes TLS, HTTP/2 and the PROXY protocol.
struct Listen {
    addr: String,
    ssl: bool,
    http2: bool,
    proxy_protocol: bool,
}

impl Converter {
    /// One nginx `server`: its plain and its `ssl` listens become two limpet servers.
    pub(super) fn server(&mut self, server: &Directive, block: &[Directive], parent: &Table) {
        let s = over(self.settings(block, false), parent);
        let mut p = Parts::default();
        for d in block {
            self.server_directive(d, &s, &mut p);
        }
        if p.ssl_on {
            let mut plain = take(&mut p.plain);
            p.secure.append(&mut plain);
        }
        if p.plain.is_empty() && p.secure.is_empty() {
            self.note(server, "no listen: nginx's default 0.0.0.0:80 used");
            p.plain.push("0.0.0.0:80".into());
        }
        let tls = self.tls(server, &s, !p.secure.is_empty());
        for (listens, tls) in [(take(&mut p.plain), None), (take(&mut p.secure), tls)] {
            if listens.is_empty() {
                continue;
            }
            self.servers.push(Server {
                fields: server_fields(listens, &p, tls, &s),
                locations: p.locations.clone(),
            });
        }
    }

    /// One directive of a `server` block into `p`, or a note.
    fn server_directive(&mut self, d: &Directive, s: &Table, p: &mut Parts) {
        match (d.name.as_str(), d.block.as_ref()) {
            ("listen", None) => {
                if let Some(listen) = self.listen(d) {
                    p.proxy_protocol |= listen.proxy_protocol;
                    p.h2c |= listen.http2 && !listen.ssl;
                    let list = if listen.ssl {
                        &mut p.secure
                    } else {
                        &mut p.plain
                    };
                    if !list.contains(&listen.addr) {
                        list.push(listen.addr);
                    }
                }
            }
            ("server_name", None) => p.names.extend(self.server_names(d)),
            ("ssl", None) if d.args == ["on"] => p.ssl_on = true,
            ("http2", None) if d.args == ["on"] => p.h2c = true,
            ("http2", None) if d.args == ["off"] => p.http2_off = true,
            ("location", Some(b)) => p.locations.extend(self.location(d, b, s)),
            (name, None) if is_inherited(name, false) => {}
            _ => self.unmapped(d),
        }
    }

    /// The `tls` table from `ssl_certificate` and its key; a TLS listen without them is noted.
    fn tls(&mut self, server: &Directive, s: &Table, secure: bool) -> Option<InlineTable> {
        let file = |key| s.get(key).and_then(Item::as_str);
        match (file("cert"), file("key")) {
            (Some(cert), Some(key)) => Some(InlineTable::from_iter([("cert", cert), ("key", key)])),
            _ => {
                if secure {
                    self.note(
                        server,
                        "ssl listen without ssl_certificate and its key: no tls",
                    );
                }
                None
            }
        }
    }

    /// `listen` → where and how; None (noted) for unix sockets.
    fn listen(&mut self, d: &Directive) -> Option<Listen> {
        let (addr, params) = d.args.split_first()?;
        if addr.starts_with("unix:") {
            self.note(d, "limpet listens on TCP host:port only");
            return None;
        }
        let addr = match addr.strip_prefix("*:") {
            Some(port) => format!("0.0.0.0:{port}"),
            None if addr.bytes().all(|b| b.is_ascii_digit()) => format!("0.0.0.0:{addr}"),
            None => with_port(addr, 80),
        };
        let extra: Vec<&str> = params
            .iter()
            .map(String::as_str)
            .filter(|p| !matches!(*p, "ssl" | "http2" | "proxy_protocol"))
            .collect();
        if !extra.is_empty() {
            let why = format!("{} ignored: no limpet equivalent", extra.join(" "));
            self.note(d, &why);
        }
        let has = |p: &str| params.iter().any(|x| x == p);
        Some(Listen {
            addr,
            ssl: has("ssl"),
            http2: has("http2"),
            proxy_protocol: has("proxy_protocol"),
        })
    }

    /// The plain names of a `server_name` line; the catch-all `_` is dropped, patterns are noted.
    fn server_names(&mut self, d: &Directive) -> Vec<String> {
        let mut out = Vec::new();
        for name in &d.args {
            match name.as_str() {
                "" | "_" => {}
                n if n.starts_with('~') || n.contains('$') => {
                    self.note(d, &format!("server name {n} is not a plain name"));
                }
                n => out.push(n.to_owned()),
            }
        }
        out
    }

    /// A prefix `location` with a usable `proxy_pass`, as a limpet location table.
    fn location(&mut self, d: &Directive, block: &[Directive], parent: &Table) -> Option<Table> {
        let path = match d.args.as_slice() {
            [p] if !p.starts_with('@') => p.clone(),
            [m, p] if m == "^~" => p.clone(),
            [m, p] if m == "=" => {
                self.note(d, "exact match approximated by a prefix");
                p.clone()
            }
            _ => {
                self.note(d, "limpet matches locations by path prefix only");
                return None;
            }
        };
        let s = over(self.settings(block, true), parent);
        let mut upstream = None;
        for x in block {
            match (x.name.as_str(), x.args.as_slice(), &x.block) {
                ("proxy_pass", [url], None) => upstream = self.proxy_pass(x, url, &path),
                (name, _, None) if is_inherited(name, true) => {}
                _ => self.unmapped(x),
            }
        }
        let Some(upstream) = upstream else {
            self.note(d, "no proxy_pass limpet can use: limpet only proxies");
            return None;
        };
        let mut t = Table::new();
        t.insert("path", value(path));
        t.insert("proxy_pass", value(upstream));
        copy_keys(&mut t, &s, location_keys());
        Some(t)
    }
}

/// The keys of one limpet `[[server]]`.
fn server_fields(listens: Vec<String>, p: &Parts, tls: Option<InlineTable>, s: &Table) -> Table {
    let mut t = Table::new();
    t.insert("listen", value(Array::from_iter(listens)));
    if !p.names.is_empty() {
        t.insert("server_name", value(Array::from_iter(&p.names)));
    }
    match tls {
        // HTTP/2 by ALPN is limpet's default on TLS listeners.
        Some(tls) => {
            t.insert("tls", value(tls));
            if p.http2_off {
                t.insert("http2", value(false));
            }
        }
        None if p.h2c => {
            t.insert("h2c", value(true));
        }
        None => {}
    }
    if p.proxy_protocol {
        t.insert("proxy_protocol", value(true));
    }
    copy_keys(&mut t, s, SERVER_KEYS);
    t
}
