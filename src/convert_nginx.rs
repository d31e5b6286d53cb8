//! `limpet convert-nginx FILE`: translate the `upstream`, `server`, `listen`, `server_name`,
//! `location` and `proxy_pass` parts of an nginx config into limpet TOML. Everything else is
//! listed in [`Conversion::unmapped`] with its line number.

use std::collections::{HashMap, HashSet};

/// The converted config and what could not be carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    pub toml: String,
    /// One entry per skipped directive, in file order: `line 12: proxy_buffering off (…)`.
    pub unmapped: Vec<String>,
}

/// Why an nginx config could not be converted at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("no upstream or server block found")]
    Empty,
}

/// Convert an nginx config (with or without the `http {}` wrapper) into limpet TOML.
pub fn convert(nginx_conf: &str) -> Result<Conversion, ConvertError> {
    let directives = parse(tokenize(nginx_conf)?)?;
    let mut c = Converter::default();
    c.find_upstream_names(&directives);
    c.http_level(&directives, &Table::new());
    if c.servers.is_empty() && c.upstreams.is_empty() {
        return Err(ConvertError::Empty);
    }
    c.notes.sort_by_key(|(line, _)| *line);
    Ok(Conversion {
        toml: c.emit(),
        unmapped: c.notes.into_iter().map(|(_, n)| n).collect(),
    })
}

// ---- syntax ----

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
}

fn syntax(line: usize, message: impl Into<String>) -> ConvertError {
    ConvertError::Syntax {
        line,
        message: message.into(),
    }
}

/// Words, `;`, `{`, `}` with their line numbers; `#` comments dropped, quotes resolved.
fn tokenize(src: &str) -> Result<Vec<(Tok, usize)>, ConvertError> {
    let mut out = Vec::new();
    let mut chars = src.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            ';' => out.push((Tok::Semi, line)),
            '{' => out.push((Tok::Open, line)),
            '}' => out.push((Tok::Close, line)),
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err(syntax(start, "unterminated quoted string")),
                        Some(q) if q == c => break,
                        Some('\\') => match chars.next() {
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(e @ ('"' | '\'' | '\\')) => word.push(e),
                            Some(e) => word.extend(['\\', e]),
                            None => return Err(syntax(start, "unterminated quoted string")),
                        },
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            word.push(ch);
                        }
                    }
                }
                if chars
                    .peek()
                    .is_some_and(|&n| !n.is_whitespace() && !";{}".contains(n))
                {
                    return Err(syntax(line, "unexpected character after quoted string"));
                }
                out.push((Tok::Word(word), start));
            }
            _ => {
                let mut word = String::from(c);
                while let Some(ch) = chars.next_if(|&n| !n.is_whitespace() && !";}".contains(n)) {
                    if ch == '{' && !word.ends_with('$') {
                        out.push((Tok::Word(std::mem::take(&mut word)), line));
                        out.push((Tok::Open, line));
                        break;
                    }
                    word.push(ch);
                    if ch == '{' {
                        while let Some(v) = chars.next_if(|&n| n != '\n') {
                            word.push(v);
                            if v == '}' {
                                break;
                            }
                        }
                    }
                }
                if !word.is_empty() {
                    out.push((Tok::Word(word), line));
                }
            }
        }
    }
    Ok(out)
}

/// `name args… ;` or `name args… { … }`.
#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    line: usize,
    block: Option<Vec<Directive>>,
}

fn parse(tokens: Vec<(Tok, usize)>) -> Result<Vec<Directive>, ConvertError> {
    parse_block(&mut tokens.into_iter(), None)
}

fn parse_block(
    tokens: &mut impl Iterator<Item = (Tok, usize)>,
    opened_at: Option<usize>,
) -> Result<Vec<Directive>, ConvertError> {
    let mut out = Vec::new();
    loop {
        let (name, line) = match tokens.next() {
            None => match opened_at {
                Some(l) => return Err(syntax(l, "block opened here is never closed")),
                None => return Ok(out),
            },
            Some((Tok::Close, l)) => match opened_at {
                Some(_) => return Ok(out),
                None => return Err(syntax(l, "unexpected \"}\"")),
            },
            Some((Tok::Semi, l)) => return Err(syntax(l, "unexpected \";\"")),
            Some((Tok::Open, l)) => return Err(syntax(l, "block without a directive name")),
            Some((Tok::Word(w), l)) => (w, l),
        };
        let mut args = Vec::new();
        let block = loop {
            match tokens.next() {
                Some((Tok::Word(w), _)) => args.push(w),
                Some((Tok::Semi, _)) => break None,
                Some((Tok::Open, l)) => break Some(parse_block(tokens, Some(l))?),
                _ => {
                    return Err(syntax(
                        line,
                        format!("directive \"{name}\" is not terminated by \";\""),
                    ))
                }
            }
        };
        out.push(Directive {
            name,
            args,
            line,
            block,
        });
    }
}

// ---- model ----

#[derive(Clone)]
enum Val {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<String>),
    Map(Vec<(String, String)>),
}

/// A TOML table in output order.
type Table = Vec<(&'static str, Val)>;

struct Upstream {
    name: String,
    fields: Table,
    servers: Vec<Table>,
}

#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Size,
    Text,
    Header,
    Cidr,
}

/// Directives nginx inherits from `http` to `server` to `location` unless the inner level sets
/// them, and the limpet key each becomes. The first four are per location, the rest per server.
const INHERITED: &[(&str, &str, Kind)] = &[
    ("proxy_connect_timeout", "connect_timeout", Kind::Duration),
    ("proxy_read_timeout", "read_timeout", Kind::Duration),
    ("proxy_set_header", "set_header", Kind::Header),
    ("client_max_body_size", "client_max_body_size", Kind::Size),
    ("ssl_certificate", "cert", Kind::Text),
    ("ssl_certificate_key", "key", Kind::Text),
    ("set_real_ip_from", "trusted_proxies", Kind::Cidr),
    (
        "client_header_timeout",
        "client_header_timeout",
        Kind::Duration,
    ),
    ("keepalive_timeout", "keepalive_timeout", Kind::Duration),
];
const LOCATION_KEYS: usize = 4;

fn inherited(name: &str, location: bool) -> Option<(&'static str, Kind)> {
    let scope = if location {
        &INHERITED[..LOCATION_KEYS]
    } else {
        INHERITED
    };
    scope
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, key, kind)| (key, kind))
}

/// The settings of a level over those of its parent (nginx: a level that sets a directive at
/// all replaces the parent's values, lists included).
fn over(mut child: Table, parent: &Table) -> Table {
    for (key, val) in parent {
        if !child.iter().any(|(k, _)| k == key) {
            child.push((key, val.clone()));
        }
    }
    child
}

fn get<'a>(t: &'a Table, key: &str) -> Option<&'a Val> {
    t.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn copy_keys(to: &mut Table, from: &Table, keys: &[&'static str]) {
    for &key in keys {
        match get(from, key) {
            Some(Val::Map(m)) if m.is_empty() => {}
            Some(v) => to.push((key, v.clone())),
            None => {}
        }
    }
}

#[derive(Default)]
struct Converter {
    notes: Vec<(usize, String)>,
    /// nginx upstream name → limpet upstream name (letters, digits, `_`, `-`).
    upstream_names: HashMap<String, String>,
    /// Every limpet upstream name given out.
    taken: HashSet<String>,
    tls_upstreams: HashSet<String>,
    upstreams: Vec<Upstream>,
    /// (addr, tls) and the name of each upstream made for a bare `proxy_pass http://host:port`.
    synthesized: Vec<((String, bool), String)>,
    servers: Vec<(Table, Vec<Table>)>,
}

impl Converter {
    fn note(&mut self, d: &Directive, why: &str) {
        let text = format!("line {}: {} ({why})", d.line, show(d));
        self.notes.push((d.line, text));
    }

    fn unmapped(&mut self, d: &Directive) {
        let why = match (d.name.as_str(), d.args.first().map(String::as_str)) {
            ("include", _) => "included files are not followed: convert them separately",
            ("map", Some("$http_upgrade")) => "limpet handles Upgrade/Connection itself",
            ("proxy_http_version", _) => "limpet always speaks HTTP/1.1 to upstreams",
            ("proxy_buffering" | "proxy_request_buffering", _) => "limpet streams bodies",
            _ => "no limpet equivalent",
        };
        self.note(d, why);
    }

    fn find_upstream_names(&mut self, dirs: &[Directive]) {
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
            .map(|c| {
                if is_name(c.encode_utf8(&mut [0; 4])) {
                    c
                } else {
                    '_'
                }
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

    /// The top level or an `http` block: upstreams, servers and inherited settings.
    fn http_level(&mut self, dirs: &[Directive], parent: &Table) {
        let settings = over(self.settings(dirs, false), parent);
        for d in dirs {
            match (d.name.as_str(), &d.block) {
                ("http", Some(block)) => self.http_level(block, &settings),
                ("server", Some(block)) => self.server(d, block, &settings),
                ("upstream", Some(block)) if d.args.len() == 1 => self.upstream(d, block),
                (name, None) if inherited(name, false).is_some() => {}
                _ => self.unmapped(d),
            }
        }
    }

    /// The inheritable directives set at one level, as limpet keys.
    fn settings(&mut self, dirs: &[Directive], location: bool) -> Table {
        let mut t = Table::new();
        for d in dirs.iter().filter(|d| d.block.is_none()) {
            let Some((key, kind)) = inherited(&d.name, location) else {
                continue;
            };
            let value = match (kind, d.args.as_slice()) {
                (Kind::Header, [name, value]) => {
                    // Even a dropped header stops nginx from inheriting the parent's headers.
                    let kept = self.header(d, name, value);
                    if let Val::Map(m) = entry(&mut t, key, Val::Map(vec![])) {
                        m.extend(kept);
                    }
                    continue;
                }
                (Kind::Cidr, [cidr]) if !cidr.starts_with("unix:") => {
                    if let Val::List(l) = entry(&mut t, key, Val::List(vec![])) {
                        l.push(cidr.clone());
                    }
                    continue;
                }
                (Kind::Duration, [v]) => duration(v).map(Val::Str),
                (Kind::Size, [v]) => size(v).map(Val::Str),
                (Kind::Text, [v]) => Some(Val::Str(v.clone())),
                _ => None,
            };
            match value {
                Some(v) => *entry(&mut t, key, Val::Bool(false)) = v,
                None => self.note(d, "arguments limpet cannot translate"),
            }
        }
        t
    }

    /// A `proxy_set_header` limpet should send, or a note on why it is dropped.
    fn header(&mut self, d: &Directive, name: &str, value: &str) -> Option<(String, String)> {
        if native_header(name, value) {
            self.note(d, "limpet sets this header itself");
        } else if value.contains('$') {
            self.note(d, "limpet's set_header does not expand nginx variables");
        } else {
            return Some((name.to_owned(), value.to_owned()));
        }
        None
    }

    fn upstream(&mut self, d: &Directive, block: &[Directive]) {
        let mut fields: Table = vec![("balance", Val::Str("round_robin".into()))];
        let mut servers = Vec::new();
        for x in block {
            let balance = match (x.name.as_str(), x.args.as_slice()) {
                ("server", [addr, params @ ..]) => {
                    servers.extend(self.upstream_server(x, addr, params));
                    continue;
                }
                ("ip_hash", []) => "ip_hash",
                ("least_conn", []) => "least_conn",
                ("hash", [key, rest @ ..]) if hash_key_supported(key) && rest.len() <= 1 => {
                    if rest.first().is_none_or(|c| c != "consistent") {
                        self.note(
                            x,
                            "limpet's hash is always consistent: keys map differently",
                        );
                    }
                    fields.push(("hash_key", Val::Str(key.clone())));
                    "hash"
                }
                ("hash", _) => {
                    self.note(
                        x,
                        "limpet hashes only $remote_addr, $cookie_*, $arg_*, $http_*",
                    );
                    continue;
                }
                ("keepalive", [n]) if n.parse::<u64>().is_ok() => {
                    fields.push(("keepalive", Val::Int(n.parse().unwrap_or_default())));
                    continue;
                }
                _ => {
                    self.unmapped(x);
                    continue;
                }
            };
            fields[0].1 = Val::Str(balance.into());
        }
        if servers.is_empty() {
            self.note(d, "upstream has no server limpet can use");
        }
        let nginx_name = &d.args[0];
        let name = match self.upstream_names.get(nginx_name) {
            Some(name) => name.clone(),
            None => self.fresh_name(nginx_name),
        };
        if self.upstreams.iter().any(|u| u.name == name) {
            return self.note(d, "duplicate upstream: nginx refuses it too");
        }
        if name != *nginx_name {
            self.note(
                d,
                &format!("renamed {name}: limpet names hold letters, digits, _ and - only"),
            );
        }
        self.upstreams.push(Upstream {
            name,
            fields,
            servers,
        });
    }

    fn upstream_server(&mut self, d: &Directive, addr: &str, params: &[String]) -> Option<Table> {
        if addr.starts_with("unix:") {
            self.note(d, "limpet does not proxy to unix sockets");
            return None;
        }
        let mut t: Table = vec![("addr", Val::Str(with_port(addr, 80)))];
        for p in params {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match server_param(k, v) {
                Some(field) => t.push(field),
                None => self.note(d, &format!("parameter {p} not translated")),
            }
        }
        Some(t)
    }

    /// One nginx `server`: its plain and its `ssl` listens become two limpet servers.
    fn server(&mut self, server: &Directive, block: &[Directive], parent: &Table) {
        let s = over(self.settings(block, false), parent);
        let (mut plain, mut secure, mut names, mut locations) = (vec![], vec![], vec![], vec![]);
        let (mut ssl_on, mut proxy_protocol) = (false, false);
        for d in block {
            match (d.name.as_str(), d.block.as_ref()) {
                ("listen", None) => {
                    if let Some((addr, ssl, pp)) = self.listen(d) {
                        proxy_protocol |= pp;
                        let list = if ssl { &mut secure } else { &mut plain };
                        if !list.contains(&addr) {
                            list.push(addr);
                        }
                    }
                }
                ("server_name", None) => names.extend(self.server_names(d)),
                ("ssl", None) if d.args == ["on"] => ssl_on = true,
                ("location", Some(b)) => locations.extend(self.location(d, b, &s)),
                (name, None) if inherited(name, false).is_some() => {}
                _ => self.unmapped(d),
            }
        }
        if ssl_on {
            secure.append(&mut plain);
        }
        if plain.is_empty() && secure.is_empty() {
            self.note(server, "no listen: nginx's default 0.0.0.0:80 used");
            plain.push("0.0.0.0:80".into());
        }
        let tls = match (get(&s, "cert"), get(&s, "key")) {
            (Some(Val::Str(cert)), Some(Val::Str(key))) => Some(Val::Map(vec![
                ("cert".into(), cert.clone()),
                ("key".into(), key.clone()),
            ])),
            _ if !secure.is_empty() => {
                self.note(
                    server,
                    "ssl listen without ssl_certificate and its key: no tls",
                );
                None
            }
            _ => None,
        };
        for (listens, tls) in [(plain, None), (secure, tls)] {
            if listens.is_empty() {
                continue;
            }
            let mut t: Table = vec![("listen", Val::List(listens))];
            if !names.is_empty() {
                t.push(("server_name", Val::List(names.clone())));
            }
            t.extend(tls.map(|files| ("tls", files)));
            if proxy_protocol {
                t.push(("proxy_protocol", Val::Bool(true)));
            }
            let keys = [
                "trusted_proxies",
                "client_header_timeout",
                "keepalive_timeout",
            ];
            copy_keys(&mut t, &s, &keys);
            self.servers.push((t, locations.clone()));
        }
    }

    /// `listen` → (host:port, ssl, proxy_protocol); None (noted) for unix sockets.
    fn listen(&mut self, d: &Directive) -> Option<(String, bool, bool)> {
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
            .filter(|p| !matches!(*p, "ssl" | "proxy_protocol"))
            .collect();
        if !extra.is_empty() {
            self.note(
                d,
                &format!("{} ignored: no limpet equivalent", extra.join(" ")),
            );
        }
        let has = |p: &str| params.iter().any(|x| x == p);
        Some((addr, has("ssl"), has("proxy_protocol")))
    }

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
                (name, _, None) if inherited(name, true).is_some() => {}
                _ => self.unmapped(x),
            }
        }
        let Some(upstream) = upstream else {
            self.note(d, "no proxy_pass limpet can use: limpet only proxies");
            return None;
        };
        let mut t: Table = vec![("path", Val::Str(path)), ("proxy_pass", Val::Str(upstream))];
        let keys = INHERITED[..LOCATION_KEYS].iter().map(|&(_, key, _)| key);
        copy_keys(&mut t, &s, &keys.collect::<Vec<_>>());
        Some(t)
    }

    /// The upstream a `proxy_pass` URL names, synthesizing one for a bare `host:port`.
    fn proxy_pass(&mut self, d: &Directive, url: &str, path: &str) -> Option<String> {
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

    fn synthesize(&mut self, host: &str, tls: bool) -> String {
        let addr = with_port(host, if tls { 443 } else { 80 });
        let key = (addr.clone(), tls);
        if let Some((_, name)) = self.synthesized.iter().find(|(k, _)| *k == key) {
            return name.clone();
        }
        let name = self.fresh_name(host);
        self.synthesized.push((key, name.clone()));
        let fields = vec![("balance", Val::Str("round_robin".into()))];
        let servers = vec![vec![("addr", Val::Str(addr))]];
        self.upstreams.push(Upstream {
            name: name.clone(),
            fields,
            servers,
        });
        name
    }

    fn emit(&self) -> String {
        let mut out = String::from("# Converted from nginx by `limpet convert-nginx`.\n");
        out += "# Review it, and run `limpet --check` on it, before use.\n";
        for (server, locations) in &self.servers {
            write_table(&mut out, "[[server]]", "", server);
            for loc in locations {
                write_table(&mut out, "[[server.location]]", "", loc);
            }
        }
        for u in &self.upstreams {
            let key = toml_key(&u.name);
            let hint = format!(
                "# Socket.IO: balance = \"sid\" (with [upstream.{key}.sticky]) keeps each\n\
                 # Engine.IO session on its node without relying on the client address.\n"
            );
            write_table(&mut out, &format!("[upstream.{key}]"), &hint, &u.fields);
            if self.tls_upstreams.contains(&u.name) {
                out += "tls = true\n";
            }
            for s in &u.servers {
                write_table(&mut out, &format!("[[upstream.{key}.server]]"), "", s);
            }
        }
        out
    }
}

// ---- helpers ----

fn entry<'a>(t: &'a mut Table, key: &'static str, empty: Val) -> &'a mut Val {
    let i = match t.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            t.push((key, empty));
            t.len() - 1
        }
    };
    &mut t[i].1
}

/// One `server` parameter of an upstream as a limpet server key.
fn server_param(k: &str, v: &str) -> Option<(&'static str, Val)> {
    let int = |key| v.parse().ok().map(|n| (key, Val::Int(n)));
    let flag = |key| v.is_empty().then_some((key, Val::Bool(true)));
    match k {
        "weight" => int("weight"),
        "max_fails" => int("max_fails"),
        "max_conns" => int("max_conns"),
        "fail_timeout" => duration(v).map(|d| ("fail_timeout", Val::Str(d))),
        "backup" => flag("backup"),
        "down" => flag("down"),
        "drain" => flag("drain"),
        "route" if !v.is_empty() => Some(("route", Val::Str(v.into()))),
        _ => None,
    }
}

/// Headers limpet sets on every proxied request, so nginx's lines for them are not needed.
fn native_header(name: &str, value: &str) -> bool {
    match name.to_ascii_lowercase().as_str() {
        "host" => matches!(value, "$host" | "$http_host"),
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip" | "upgrade"
        | "connection" => true,
        _ => false,
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

fn hash_key_supported(key: &str) -> bool {
    let name = ["$cookie_", "$arg_", "$http_"]
        .iter()
        .find_map(|p| key.strip_prefix(p));
    key == "$remote_addr" || name.is_some_and(is_name)
}

/// `host` or `[v6]` gets the default port; `host:port` and `[v6]:port` are kept.
fn with_port(addr: &str, port: u16) -> String {
    let has_port = match addr.strip_prefix('[') {
        Some(rest) => rest.contains("]:"),
        None => addr.contains(':'),
    };
    match has_port {
        true => addr.to_owned(),
        false => format!("{addr}:{port}"),
    }
}

/// nginx time (`500ms`, `60s`, `1m30s`, `1h`, bare `60` = seconds) as limpet's `Ns` / `Nms`.
fn duration(s: &str) -> Option<String> {
    let (mut total, mut rest) = (0u64, s.trim());
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..].find(|c: char| !c.is_ascii_alphabetic());
        let unit_end = unit_len.map_or(rest.len(), |i| i + digits);
        let n: u64 = rest[..digits].parse().ok()?;
        let ms: u64 = match &rest[digits..unit_end] {
            "ms" => 1,
            "s" | "" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "M" => 2_592_000_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(ms)?)?;
        rest = rest[unit_end..].trim_start();
    }
    Some(match total % 1000 {
        0 => format!("{}s", total / 1000),
        _ => format!("{total}ms"),
    })
}

/// nginx size (`1024`, `8k`, `1m`, `1g`) in lower case.
fn size(s: &str) -> Option<String> {
    let digits = s.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(s);
    let ok = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.to_ascii_lowercase())
}

/// A directive as written, for notes.
fn show(d: &Directive) -> String {
    let mut out = d.name.clone();
    for a in &d.args {
        let plain =
            !a.is_empty() && !a.contains(|c: char| c.is_whitespace() || "\"';{}#".contains(c));
        out += &if plain {
            format!(" {a}")
        } else {
            format!(" {a:?}")
        };
    }
    if d.block.is_some() {
        out += " { … }";
    }
    out
}

fn write_table(out: &mut String, header: &str, comment: &str, fields: &Table) {
    *out += &format!("\n{header}\n{comment}");
    for (key, val) in fields {
        *out += &format!("{key} = {}\n", toml_value(val));
    }
}

fn toml_value(v: &Val) -> String {
    match v {
        Val::Str(s) => toml_str(s),
        Val::Int(n) => n.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::List(l) => format!(
            "[{}]",
            l.iter().map(|s| toml_str(s)).collect::<Vec<_>>().join(", ")
        ),
        Val::Map(m) => {
            let pairs = m
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)));
            format!("{{ {} }}", pairs.collect::<Vec<_>>().join(", "))
        }
    }
}

fn toml_key(k: &str) -> String {
    match is_name(k) {
        true => k.to_owned(),
        false => toml_str(k),
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\n' => out += "\\n",
            '\t' => out += "\\t",
            c if c.is_control() => out += &format!("\\u{:04X}", u32::from(c)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
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
        let conf = SOCKET_IO_NODES.replace("ip_hash;", "hash $remote_addr consistent;");
        let (v, _) = convert_ok(&conf);
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
    fn bare_proxy_pass_synthesizes_one_upstream_per_address() {
        let conf = "server { listen 80; root /var/www;
            location /socket.io/ { proxy_pass http://localhost:3000; }
            location /api/ { proxy_pass http://localhost:3000/api/; }
            location /s/ { proxy_pass https://[::1]; } }";
        let (v, notes) = convert_ok(conf);
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
        let conf = r#"
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
        let (v, notes) = convert_ok(conf);
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
                "line 14: listen [::]:443 ssl http2 (http2 ignored",
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
        let conf = "server { listen 127.0.0.1:8080; # comment ; {\n location '/a b' {
            proxy_pass http://up; proxy_set_header \"X-Q\" 'say \"hi\";'; } }
            upstream up { server ${host}x:1; }
            upstream io.nodes { server a:1; }
            server { listen 81; listen 0.0.0.0:81; location / { proxy_pass http://io.nodes; } }
            upstream io.nodes { server b:1; }";
        let (v, notes) = convert_ok(conf);
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
}
