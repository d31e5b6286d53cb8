//! `upstream` blocks and the upstreams `proxy_pass` names (or needs made for a bare address).

use toml_edit::{value, Table, Value};

use super::convert::Converter;
use super::emit::Upstream;
use super::syntax::Directive;
use super::values::{count, duration, is_name, with_port};

impl Converter {
    /// Gives every `upstream` block its limpet name before anything refers to it.
    pub(super) fn find_upstream_names(&mut self, dirs: &[Directive]) {
        for d in dirs {
            match (d.name.as_str(), &d.block, d.args.as_slice()) {
                ("upstream", Some(_), [name]) if !self.upstream_names.contains_key(name) => {
                    let limpet = self.fresh_name(name);
                    self.upstream_names.insert(name.clone(), limpet);
                }
                ("http", Some(block), _) => self.find_upstream_names(block),
                _ => {}
            }
        }
    }

    /// `wanted` made into an unused limpet upstream name.
    fn fresh_name(&mut self, wanted: &str) -> String {
        let base: String = wanted
            .chars()
            .map(|c| match is_name(c.encode_utf8(&mut [0; 4])) {
                true => c,
                false => '_',
            })
            .collect();
        let mut name = base.clone();
        for i in 2.. {
            if !self.taken.contains(&name) {
                break;
            }
            name = format!("{base}_{i}");
        }
        self.taken.insert(name.clone());
        name
    }

    /// An `upstream NAME { … }` block.
    pub(super) fn upstream(&mut self, d: &Directive, nginx_name: &str, block: &[Directive]) {
        let mut fields = Table::new();
        fields.insert("balance", value("round_robin"));
        let mut servers = Vec::new();
        for x in block {
            match (x.name.as_str(), x.args.as_slice()) {
                ("server", [addr, params @ ..]) => {
                    servers.extend(self.upstream_server(x, addr, params));
                }
                _ => self.upstream_setting(x, &mut fields),
            }
        }
        if servers.is_empty() {
            self.note(d, "upstream has no server limpet can use");
        }
        let name = match self.upstream_names.get(nginx_name) {
            Some(name) => name.clone(),
            None => self.fresh_name(nginx_name),
        };
        if self.upstreams.iter().any(|u| u.name == name) {
            return self.note(d, "duplicate upstream: nginx refuses it too");
        }
        if name != nginx_name {
            let why = format!("renamed {name}: limpet names hold letters, digits, _ and - only");
            self.note(d, &why);
        }
        self.upstreams.push(Upstream {
            name,
            fields,
            servers,
        });
    }

    /// A balancing method or `keepalive` as upstream keys; anything else is noted.
    fn upstream_setting(&mut self, x: &Directive, fields: &mut Table) {
        let balance = match (x.name.as_str(), x.args.as_slice()) {
            ("ip_hash", []) => "ip_hash",
            ("least_conn", []) => "least_conn",
            ("hash", [key, rest @ ..]) if hash_key_supported(key) && rest.len() <= 1 => {
                if rest.first().is_none_or(|c| c != "consistent") {
                    self.note(
                        x,
                        "limpet's hash is always consistent: keys map differently",
                    );
                }
                fields.insert("hash_key", value(key.as_str()));
                "hash"
            }
            ("hash", _) => {
                return self.note(
                    x,
                    "limpet hashes only $remote_addr, $cookie_*, $arg_*, $http_*",
                )
            }
            ("keepalive", [n]) => match count(n) {
                Some(n) => {
                    fields.insert("keepalive", value(n));
                    return;
                }
                None => return self.unmapped(x),
            },
            _ => return self.unmapped(x),
        };
        fields.insert("balance", value(balance));
    }

    /// A `server` line of an upstream, or None (noted) for a unix socket.
    fn upstream_server(&mut self, d: &Directive, addr: &str, params: &[String]) -> Option<Table> {
        if addr.starts_with("unix:") {
            self.note(d, "limpet does not proxy to unix sockets");
            return None;
        }
        let mut t = Table::new();
        t.insert("addr", value(with_port(addr, 80)));
        for p in params {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match server_param(k, v) {
                Some((key, v)) => {
                    t.insert(key, value(v));
                }
                None => self.note(d, &format!("parameter {p} not translated")),
            }
        }
        Some(t)
    }

    /// The upstream a `proxy_pass` URL names, synthesizing one for a bare `host:port`.
    pub(super) fn proxy_pass(&mut self, d: &Directive, url: &str, path: &str) -> Option<String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => (false, ""),
        };
        if rest.is_empty() || rest.contains('$') || rest.starts_with("unix:") {
            self.note(d, "limpet proxies to http(s)://host[:port] only");
            return None;
        }
        let (host, uri) = rest
            .split_once('/')
            .map_or((rest, None), |(h, u)| (h, Some(u)));
        if uri.is_some_and(|u| format!("/{u}") != path) {
            self.note(
                d,
                "URI part dropped: limpet passes the request path unchanged",
            );
        }
        let name = match self.upstream_names.get(host) {
            Some(name) => name.clone(),
            None => self.synthesize(host, tls),
        };
        if tls {
            self.tls_upstreams.insert(name.clone());
        }
        Some(name)
    }

    /// The upstream made for `proxy_pass` to a bare address, one per address.
    fn synthesize(&mut self, host: &str, tls: bool) -> String {
        let addr = with_port(host, if tls { 443 } else { 80 });
        let key = (addr.clone(), tls);
        if let Some((_, name)) = self.synthesized.iter().find(|(k, _)| *k == key) {
            return name.clone();
        }
        let name = self.fresh_name(host);
        self.synthesized.push((key, name.clone()));
        let mut fields = Table::new();
        fields.insert("balance", value("round_robin"));
        let mut server = Table::new();
        server.insert("addr", value(addr));
        self.upstreams.push(Upstream {
            name: name.clone(),
            fields,
            servers: vec![server],
        });
        name
    }
}

/// One `server` parameter of an upstream as a limpet server key.
fn server_param(k: &str, v: &str) -> Option<(&'static str, Value)> {
    let int = |key| count(v).map(|n| (key, Value::from(n)));
    let flag = |key| v.is_empty().then(|| (key, Value::from(true)));
    match k {
        "weight" => int("weight"),
        "max_fails" => int("max_fails"),
        "max_conns" => int("max_conns"),
        "fail_timeout" => duration(v).map(|d| ("fail_timeout", Value::from(d))),
        "backup" => flag("backup"),
        "down" => flag("down"),
        "drain" => flag("drain"),
        "route" if !v.is_empty() => Some(("route", Value::from(v))),
        _ => None,
    }
}

/// Hash keys limpet supports: the client address, a cookie, a query argument or a header.
fn hash_key_supported(key: &str) -> bool {
    let name = ["$cookie_", "$arg_", "$http_"]
        .iter()
        .find_map(|p| key.strip_prefix(p));
    key == "$remote_addr" || name.is_some_and(is_name)
}
