//! `limpet convert-nginx FILE`: translate the `upstream`, `server`, `listen`, `server_name`,
//! `location` and `proxy_pass` parts of an nginx config into limpet TOML. Everything else is
//! listed in [`Conversion::unmapped`] with its line number.

use std::collections::HashSet;

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
    c.http_level(&directives, &Settings::default());
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

type Table = Vec<(&'static str, Val)>;

struct Upstream {
    name: String,
    fields: Table,
    servers: Vec<Table>,
}

/// Directives nginx inherits from `http` to `server` to `location` unless the inner level sets
/// them: each `Some` field here was set at some level.
#[derive(Clone, Default)]
struct Settings {
    headers: Option<Vec<(String, String)>>,
    read_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_body: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    trusted: Option<Vec<String>>,
}

impl Settings {
    fn over(self, parent: &Settings) -> Settings {
        let p = parent.clone();
        Settings {
            headers: self.headers.or(p.headers),
            read_timeout: self.read_timeout.or(p.read_timeout),
            connect_timeout: self.connect_timeout.or(p.connect_timeout),
            max_body: self.max_body.or(p.max_body),
            cert: self.cert.or(p.cert),
            key: self.key.or(p.key),
            header_timeout: self.header_timeout.or(p.header_timeout),
            keepalive_timeout: self.keepalive_timeout.or(p.keepalive_timeout),
            trusted: self.trusted.or(p.trusted),
        }
    }
}

const LOCATION_SETTINGS: &[&str] = &[
    "proxy_set_header",
    "proxy_read_timeout",
    "proxy_connect_timeout",
    "client_max_body_size",
    "proxy_http_version",
];
const SERVER_SETTINGS: &[&str] = &[
    "ssl_certificate",
    "ssl_certificate_key",
    "client_header_timeout",
    "keepalive_timeout",
    "set_real_ip_from",
];

#[derive(Default)]
struct Converter {
    notes: Vec<(usize, String)>,
    upstream_names: HashSet<String>,
    tls_upstreams: HashSet<String>,
    upstreams: Vec<Upstream>,
    /// (addr, tls) → name of the upstreams made for bare `proxy_pass http://host:port`.
    synthesized: Vec<((String, bool), String)>,
    servers: Vec<(Table, Vec<Table>)>,
}

impl Converter {
    fn note(&mut self, d: &Directive, why: &str) {
        self.notes
            .push((d.line, format!("line {}: {} ({why})", d.line, show(d))));
    }

    fn unmapped(&mut self, d: &Directive) {
        let why = match d.name.as_str() {
            "include" => "included files are not followed: convert them separately",
            "map" if d.args.first().is_some_and(|a| a == "$http_upgrade") => {
                "limpet handles Upgrade/Connection itself"
            }
            "proxy_buffering" | "proxy_request_buffering" => {
                "no limpet equivalent; limpet streams bodies unbuffered"
            }
            _ => "no limpet equivalent",
        };
        self.note(d, why);
    }

    fn find_upstream_names(&mut self, dirs: &[Directive]) {
        for d in dirs {
            match (d.name.as_str(), &d.block, d.args.as_slice()) {
                ("upstream", Some(_), [name]) => drop(self.upstream_names.insert(name.clone())),
                ("http", Some(block), _) => self.find_upstream_names(block),
                _ => {}
            }
        }
    }

    /// The top level or an `http` block: upstreams, servers and inherited settings.
    fn http_level(&mut self, dirs: &[Directive], parent: &Settings) {
        let settings = self.settings(dirs, false).over(parent);
        for d in dirs {
            match (d.name.as_str(), &d.block) {
                ("http", Some(block)) => self.http_level(block, &settings),
                ("server", Some(block)) => self.server(d, block, &settings),
                ("upstream", Some(block)) if d.args.len() == 1 => self.upstream(d, block),
                (name, None) if is_setting(name, false) => {}
                _ => self.unmapped(d),
            }
        }
    }

    /// The inheritable directives of one level (`location` = only the per-location ones).
    fn settings(&mut self, dirs: &[Directive], location: bool) -> Settings {
        let mut s = Settings::default();
        for d in dirs
            .iter()
            .filter(|d| d.block.is_none() && is_setting(&d.name, location))
        {
            let arg = d.args.first().cloned().unwrap_or_default();
            let ok = match (d.name.as_str(), d.args.len()) {
                ("proxy_set_header", 2) => self.header(&mut s, d),
                ("proxy_http_version", _) => {
                    self.note(d, "limpet always speaks HTTP/1.1 to upstreams");
                    true
                }
                ("proxy_read_timeout", 1) => set(&mut s.read_timeout, duration(&arg)),
                ("proxy_connect_timeout", 1) => set(&mut s.connect_timeout, duration(&arg)),
                ("client_max_body_size", 1) => set(&mut s.max_body, size(&arg)),
                ("ssl_certificate", 1) => set(&mut s.cert, Some(arg)),
                ("ssl_certificate_key", 1) => set(&mut s.key, Some(arg)),
                ("client_header_timeout", 1) => set(&mut s.header_timeout, duration(&arg)),
                ("keepalive_timeout", 1) => set(&mut s.keepalive_timeout, duration(&arg)),
                ("set_real_ip_from", 1) if !arg.starts_with("unix:") => {
                    s.trusted.get_or_insert_with(Vec::new).push(arg);
                    true
                }
                _ => false,
            };
            if !ok {
                self.note(d, "arguments limpet cannot translate");
            }
        }
        s
    }

    fn header(&mut self, s: &mut Settings, d: &Directive) -> bool {
        let headers = s.headers.get_or_insert_with(Vec::new);
        let (name, value) = (&d.args[0], &d.args[1]);
        if native_header(name, value) {
            self.note(d, "limpet sets this header itself");
        } else if value.contains('$') {
            self.note(d, "nginx variables are not expanded by limpet's set_header");
        } else {
            headers.push((name.clone(), value.clone()));
        }
        true
    }

    fn upstream(&mut self, d: &Directive, block: &[Directive]) {
        let name = d.args[0].clone();
        let mut fields: Table = Vec::new();
        let mut balance = "round_robin";
        let mut servers = Vec::new();
        for x in block {
            match (x.name.as_str(), x.args.as_slice()) {
                ("server", [addr, params @ ..]) => {
                    servers.extend(self.upstream_server(x, addr, params))
                }
                ("ip_hash", []) => balance = "ip_hash",
                ("least_conn", []) => balance = "least_conn",
                ("hash", [key, rest @ ..]) if hash_key_supported(key) && rest.len() <= 1 => {
                    if rest.first().is_none_or(|c| c != "consistent") {
                        self.note(
                            x,
                            "limpet's hash is always consistent: keys map differently",
                        );
                    }
                    balance = "hash";
                    fields.push(("hash_key", Val::Str(key.clone())));
                }
                ("hash", _) => self.note(
                    x,
                    "limpet hashes only $remote_addr, $cookie_*, $arg_*, $http_*",
                ),
                ("keepalive", [n]) => match n.parse() {
                    Ok(n) => fields.push(("keepalive", Val::Int(n))),
                    Err(_) => self.note(x, "keepalive must be a count"),
                },
                _ => self.unmapped(x),
            }
        }
        fields.insert(0, ("balance", Val::Str(balance.into())));
        if servers.is_empty() {
            self.note(d, "upstream has no server limpet can use");
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
                None => self.note(d, &format!("parameter {p} has no limpet equivalent")),
            }
        }
        Some(t)
    }

    fn server(&mut self, server: &Directive, block: &[Directive], parent: &Settings) {
        let s = self.settings(block, false).over(parent);
        let (mut plain, mut secure, mut names, mut locations) = (vec![], vec![], vec![], vec![]);
        let (mut ssl_on, mut proxy_protocol) = (false, false);
        for d in block {
            match (d.name.as_str(), d.block.as_ref()) {
                ("listen", None) => match listen(d) {
                    Some((addr, ssl, pp, extra)) => {
                        if !extra.is_empty() {
                            self.note(
                                d,
                                &format!("{} ignored: no limpet equivalent", extra.join(" ")),
                            );
                        }
                        proxy_protocol |= pp;
                        if ssl {
                            secure.push(addr)
                        } else {
                            plain.push(addr)
                        }
                    }
                    None => self.note(d, "limpet listens on TCP host:port only"),
                },
                ("server_name", None) => names.extend(self.server_names(d)),
                ("ssl", None) if d.args == ["on"] => ssl_on = true,
                ("location", Some(b)) => locations.extend(self.location(d, b, &s)),
                (name, None) if is_setting(name, false) => {}
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
        if !secure.is_empty() && (s.cert.is_none() || s.key.is_none()) {
            self.note(
                server,
                "ssl listen without ssl_certificate and ssl_certificate_key: tls left out",
            );
        }
        for (listens, tls) in [(plain, false), (secure, true)] {
            if listens.is_empty() {
                continue;
            }
            let mut t: Table = vec![("listen", Val::List(listens))];
            if !names.is_empty() {
                t.push(("server_name", Val::List(names.clone())));
            }
            if let (true, Some(cert), Some(key)) = (tls, &s.cert, &s.key) {
                let files = vec![("cert".into(), cert.clone()), ("key".into(), key.clone())];
                t.push(("tls", Val::Map(files)));
            }
            push_server_settings(&mut t, &s, proxy_protocol);
            self.servers.push((t, locations.clone()));
        }
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

    fn location(&mut self, d: &Directive, block: &[Directive], parent: &Settings) -> Option<Table> {
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
        let s = self.settings(block, true).over(parent);
        let mut upstream = None;
        for x in block {
            match (x.name.as_str(), x.args.as_slice(), &x.block) {
                ("proxy_pass", [url], None) => upstream = self.proxy_pass(x, url, &path),
                (name, _, None) if is_setting(name, true) => {}
                _ => self.unmapped(x),
            }
        }
        let Some(upstream) = upstream else {
            self.note(d, "no proxy_pass limpet can use: limpet only proxies");
            return None;
        };
        let mut t: Table = vec![("path", Val::Str(path)), ("proxy_pass", Val::Str(upstream))];
        push_str(&mut t, "connect_timeout", &s.connect_timeout);
        push_str(&mut t, "read_timeout", &s.read_timeout);
        if let Some(headers) = s.headers.filter(|h| !h.is_empty()) {
            t.push(("set_header", Val::Map(headers)));
        }
        push_str(&mut t, "client_max_body_size", &s.max_body);
        Some(t)
    }

    /// The upstream a `proxy_pass` URL names, synthesizing one for a bare `host:port`.
    fn proxy_pass(&mut self, d: &Directive, url: &str, path: &str) -> Option<String> {
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return self.skip(d, "limpet proxies to http:// and https:// only"),
        };
        if rest.contains('$') || rest.starts_with("unix:") || rest.is_empty() {
            return self.skip(d, "variables and unix sockets are not supported");
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
        let name = if self.upstream_names.contains(host) {
            host.to_owned()
        } else {
            self.synthesize(host, tls)
        };
        if tls {
            self.tls_upstreams.insert(name.clone());
        }
        Some(name)
    }

    fn skip(&mut self, d: &Directive, why: &str) -> Option<String> {
        self.note(d, why);
        None
    }

    fn synthesize(&mut self, host: &str, tls: bool) -> String {
        let addr = with_port(host, if tls { 443 } else { 80 });
        let key = (addr.clone(), tls);
        if let Some((_, name)) = self.synthesized.iter().find(|(k, _)| *k == key) {
            return name.clone();
        }
        let base: String = host
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut name = base.clone();
        for i in 2.. {
            if !self.upstream_names.contains(&name) {
                break;
            }
            name = format!("{base}_{i}");
        }
        self.upstream_names.insert(name.clone());
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
        let mut out =
            String::from("# limpet config converted from nginx by `limpet convert-nginx`.\n");
        out += "# Review it, and `limpet --check` it, before use.\n";
        for (server, locations) in &self.servers {
            write_table(&mut out, "[[server]]", "", server);
            for loc in locations {
                write_table(&mut out, "[[server.location]]", "", loc);
            }
        }
        for u in &self.upstreams {
            let key = toml_key(&u.name);
            let hint = format!(
                "# For Socket.IO paths, balance = \"sid\" keeps each Engine.IO session on one\n\
                 # node without ip_hash (see [upstream.{key}.sticky] in limpet's docs).\n"
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

fn is_setting(name: &str, location: bool) -> bool {
    LOCATION_SETTINGS.contains(&name) || (!location && SERVER_SETTINGS.contains(&name))
}

fn set(slot: &mut Option<String>, value: Option<String>) -> bool {
    let ok = value.is_some();
    if ok {
        *slot = value;
    }
    ok
}

fn push_str(t: &mut Table, key: &'static str, value: &Option<String>) {
    if let Some(v) = value {
        t.push((key, Val::Str(v.clone())));
    }
}

fn push_server_settings(t: &mut Table, s: &Settings, proxy_protocol: bool) {
    if proxy_protocol {
        t.push(("proxy_protocol", Val::Bool(true)));
    }
    if let Some(cidrs) = &s.trusted {
        t.push(("trusted_proxies", Val::List(cidrs.clone())));
    }
    push_str(t, "client_header_timeout", &s.header_timeout);
    push_str(t, "keepalive_timeout", &s.keepalive_timeout);
}

/// Headers limpet sets on every proxied request, so nginx's lines for them are not needed.
fn native_header(name: &str, value: &str) -> bool {
    match name.to_ascii_lowercase().as_str() {
        "host" => matches!(value, "$host" | "$http_host"),
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip" => true,
        "upgrade" | "connection" => true,
        _ => false,
    }
}

fn hash_key_supported(key: &str) -> bool {
    let name = ["$cookie_", "$arg_", "$http_"]
        .iter()
        .find_map(|p| key.strip_prefix(p));
    key == "$remote_addr"
        || name.is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        })
}

/// `listen` → (host:port, ssl, proxy_protocol, parameters limpet ignores); None for unix sockets.
fn listen(d: &Directive) -> Option<(String, bool, bool, Vec<String>)> {
    let (addr, params) = d.args.split_first()?;
    if addr.starts_with("unix:") {
        return None;
    }
    let addr = match addr.strip_prefix("*:") {
        Some(port) => format!("0.0.0.0:{port}"),
        None if addr.bytes().all(|b| b.is_ascii_digit()) => format!("0.0.0.0:{addr}"),
        None => with_port(addr, 80),
    };
    let (mut ssl, mut pp, mut extra) = (false, false, vec![]);
    for p in params {
        match p.as_str() {
            "ssl" => ssl = true,
            "proxy_protocol" => pp = true,
            other => extra.push(other.to_owned()),
        }
    }
    Some((addr, ssl, pp, extra))
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
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| i + digits);
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
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    let ok = !digits.is_empty()
        && s.len() - digits.len() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.to_ascii_lowercase())
}

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
    out.push('\n');
    out.push_str(header);
    out.push('\n');
    out.push_str(comment);
    for (key, val) in fields {
        out.push_str(&format!("{key} = {}\n", toml_value(val)));
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
            let pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_str(v)))
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        }
    }
}

fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if bare {
        k.to_owned()
    } else {
        toml_str(k)
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
            c if c.is_control() => out += &format!("\\u{:04X}", c as u32),
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

    fn has_note(notes: &[String], prefix: &str) -> bool {
        notes.iter().any(|n| n.starts_with(prefix))
    }

    #[test]
    fn socket_io_multiple_nodes() {
        let (v, notes) = convert_ok(SOCKET_IO_NODES);
        let server = &v["server"][0];
        assert_eq!(server["listen"], Value::Array(vec!["0.0.0.0:3000".into()]));
        assert_eq!(
            server["server_name"],
            Value::Array(vec!["io.yourhost.com".into()])
        );
        let loc = &server["location"][0];
        assert_eq!(loc["path"].as_str(), Some("/"));
        assert_eq!(loc["proxy_pass"].as_str(), Some("nodes"));
        assert!(
            loc.get("set_header").is_none(),
            "limpet sets all of these itself"
        );
        let nodes = &v["upstream"]["nodes"];
        assert_eq!(nodes["balance"].as_str(), Some("ip_hash"));
        let addrs: Vec<_> = nodes["server"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["addr"].clone())
            .collect();
        assert_eq!(
            addrs,
            vec![
                Value::from("app01:3000"),
                "app02:3000".into(),
                "app03:3000".into()
            ]
        );
        for prefix in [
            "line 8: proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for (limpet sets",
            "line 9: proxy_set_header Host $host (limpet sets",
            "line 14: proxy_http_version 1.1 (",
            "line 15: proxy_set_header Upgrade",
            "line 16: proxy_set_header Connection upgrade (",
        ] {
            assert!(has_note(&notes, prefix), "{prefix}\n{notes:#?}");
        }
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
        assert_eq!(v["upstream"]["nodes"]["balance"].as_str(), Some("hash"));
        assert_eq!(
            v["upstream"]["nodes"]["hash_key"].as_str(),
            Some("$remote_addr")
        );
    }

    #[test]
    fn nginx_websocket_example() {
        let (v, notes) = convert_ok(NGINX_WEBSOCKET);
        let server = &v["server"][0];
        assert_eq!(server["listen"], Value::Array(vec!["0.0.0.0:80".into()]));
        assert_eq!(server["location"][0]["path"].as_str(), Some("/chat/"));
        assert_eq!(
            server["location"][0]["proxy_pass"].as_str(),
            Some("backend")
        );
        let backend = &v["upstream"]["backend"];
        assert_eq!(backend["balance"].as_str(), Some("round_robin"));
        assert_eq!(backend["server"][0]["addr"].as_str(), Some("backend:80"));
        assert!(has_note(
            &notes,
            "line 3: map $http_upgrade $connection_upgrade { … } (limpet handles"
        ));
        assert!(has_note(&notes, "line 8: server { … } (no listen"));
        assert!(has_note(
            &notes,
            "line 13: proxy_set_header Connection $connection_upgrade (limpet sets"
        ));
    }

    #[test]
    fn bare_proxy_pass_synthesizes_one_upstream_per_address() {
        let conf = "server { listen 80; root /var/www;
            location /socket.io/ { proxy_pass http://localhost:3000; }
            location /api/ { proxy_pass http://localhost:3000/api/; }
            location /s/ { proxy_pass https://[::1]; } }";
        let (v, notes) = convert_ok(conf);
        let locs = v["server"][0]["location"].as_array().unwrap();
        assert_eq!(locs[0]["proxy_pass"].as_str(), Some("localhost_3000"));
        assert_eq!(locs[1]["proxy_pass"].as_str(), Some("localhost_3000"));
        assert_eq!(locs[2]["proxy_pass"].as_str(), Some("___1_"));
        assert_eq!(
            v["upstream"]["___1_"]["server"][0]["addr"].as_str(),
            Some("[::1]:443")
        );
        assert_eq!(v["upstream"]["___1_"]["tls"].as_bool(), Some(true));
        assert_eq!(v["upstream"].as_table().unwrap().len(), 2);
        assert!(has_note(
            &notes,
            "line 1: root /var/www (no limpet equivalent)"
        ));
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
        let servers = v["server"].as_array().unwrap();
        assert_eq!(servers.len(), 2, "plain and TLS listens become two servers");
        assert_eq!(
            servers[0]["listen"],
            Value::Array(vec!["0.0.0.0:80".into()])
        );
        assert!(servers[0].get("tls").is_none());
        let tls_listens = Value::Array(vec!["[::]:443".into(), "0.0.0.0:8443".into()]);
        assert_eq!(servers[1]["listen"], tls_listens);
        assert_eq!(
            servers[1]["tls"]["key"].as_str(),
            Some("/etc/ssl/example.key")
        );
        assert_eq!(servers[1]["proxy_protocol"].as_bool(), Some(true));
        let names = Value::Array(vec!["example.com".into(), "*.example.com".into()]);
        assert_eq!(servers[0]["server_name"], names);
        assert_eq!(
            servers[0]["trusted_proxies"][0].as_str(),
            Some("10.0.0.0/8")
        );
        let locs = servers[1]["location"].as_array().unwrap();
        assert_eq!(locs.len(), 2);
        assert_eq!(locs[0]["read_timeout"].as_str(), Some("90s"));
        assert_eq!(locs[0]["connect_timeout"].as_str(), Some("500ms"));
        assert_eq!(locs[0]["set_header"]["X-Team"].as_str(), Some("edge ops"));
        assert_eq!(locs[0]["client_max_body_size"].as_str(), Some("10m"));
        assert_eq!(locs[1]["path"].as_str(), Some("/health"));
        assert_eq!(locs[1]["read_timeout"].as_str(), Some("90s"));
        assert!(
            locs[1]["set_header"].get("X-Team").is_none(),
            "nginx does not merge header lists"
        );
        let io = &v["upstream"]["io"];
        assert_eq!(io["balance"].as_str(), Some("least_conn"));
        assert_eq!(io["keepalive"].as_integer(), Some(32));
        let first = &io["server"][0];
        assert_eq!(first["weight"].as_integer(), Some(5));
        assert_eq!(first["max_fails"].as_integer(), Some(3));
        assert_eq!(first["fail_timeout"].as_str(), Some("60s"));
        assert_eq!(first["max_conns"].as_integer(), Some(100));
        assert_eq!(io["server"][1]["addr"].as_str(), Some("10.0.0.2:80"));
        assert_eq!(io["server"][1]["backup"].as_bool(), Some(true));
        assert_eq!(io["server"][2]["down"].as_bool(), Some(true));
        assert_eq!(io["server"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["upstream"]["cache"]["balance"].as_str(),
            Some("round_robin")
        );
        for prefix in [
            "line 5: zone io 64k (",
            "line 7: server 10.0.0.2 backup slow_start=30s (parameter slow_start=30s",
            "line 9: server unix:/tmp/io.sock (",
            "line 11: hash $request_uri consistent (limpet hashes only",
            "line 14: listen [::]:443 ssl http2 (http2 ignored",
            "line 26: proxy_buffering off (",
            "line 28: location = /health { … } (exact match",
            "line 29: location ~ \\.php$ { … } (",
            "line 30: location /static/ { … } (no proxy_pass",
            "line 30: root /srv (",
        ] {
            assert!(has_note(&notes, prefix), "{prefix}\n{notes:#?}");
        }
    }

    #[test]
    fn quoting_comments_and_variables() {
        let conf = "server { listen 127.0.0.1:8080; # comment ; {\n location '/a b' {
            proxy_pass http://up; proxy_set_header \"X-Q\" 'say \"hi\";'; } }
            upstream up { server ${host}x:1; }";
        let (v, notes) = convert_ok(conf);
        let loc = &v["server"][0]["location"][0];
        assert_eq!(loc["path"].as_str(), Some("/a b"));
        assert_eq!(loc["set_header"]["X-Q"].as_str(), Some("say \"hi\";"));
        assert_eq!(
            v["upstream"]["up"]["server"][0]["addr"].as_str(),
            Some("${host}x:1")
        );
        assert!(notes.is_empty(), "{notes:#?}");
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
        let cases = [
            ("60", "60s"),
            ("60s", "60s"),
            ("1m", "60s"),
            ("500ms", "500ms"),
            ("1m30s", "90s"),
        ];
        for (nginx, limpet) in cases {
            assert_eq!(duration(nginx).as_deref(), Some(limpet), "{nginx}");
        }
        assert_eq!(duration("1h 1ms").as_deref(), Some("3600001ms"));
        for bad in ["", "s", "1x", "-1s", "1.5s", "99999999999999999999y"] {
            assert_eq!(duration(bad), None, "{bad}");
        }
        assert_eq!(size("1M").as_deref(), Some("1m"));
        assert_eq!(size("0").as_deref(), Some("0"));
        assert_eq!(size("1kk"), None);
        assert_eq!(size("m"), None);
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
