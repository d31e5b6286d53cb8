//! The conversion's state, the `http` level, and the settings nginx inherits from level to level.

use std::collections::{HashMap, HashSet};

use toml_edit::{value, Array, InlineTable, Item, Table, Value};

use super::emit::{Server, Upstream};
use super::syntax::Directive;
use super::values::{duration, size};

/// How an inherited directive's arguments become a limpet value.
#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Size,
    Text,
    Header,
    Cidr,
}

/// Directives nginx inherits from `http` to `server` to `location` unless the inner level sets
/// them, and the limpet key each becomes. The first [`LOCATION_KEYS`] are per location, the rest per server.
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

/// The inherited settings a limpet `[[server]]` takes.
pub(super) const SERVER_KEYS: [&str; 3] = [
    "trusted_proxies",
    "client_header_timeout",
    "keepalive_timeout",
];

/// The inherited settings a limpet `[[server.location]]` takes.
pub(super) fn location_keys() -> impl Iterator<Item = &'static str> {
    INHERITED[..LOCATION_KEYS].iter().map(|&(_, key, _)| key)
}

/// Whether `name` is an inherited directive allowed at this level.
pub(super) fn is_inherited(name: &str, location: bool) -> bool {
    inherited(name, location).is_some()
}

/// The limpet key of an inherited directive allowed at this level.
fn inherited(name: &str, location: bool) -> Option<(&'static str, Kind)> {
    let scope = match location {
        true => &INHERITED[..LOCATION_KEYS],
        false => INHERITED,
    };
    scope
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(_, key, kind)| (key, kind))
}

/// The settings of a level over those of its parent (nginx: a level that sets a directive at
/// all replaces the parent's values, lists included).
pub(super) fn over(mut child: Table, parent: &Table) -> Table {
    for (key, item) in parent.iter() {
        if !child.contains_key(key) {
            child.insert(key, item.clone());
        }
    }
    child
}

/// Copies the settings named by `keys` that are set, skipping empty header maps.
pub(super) fn copy_keys<'k>(to: &mut Table, from: &Table, keys: impl IntoIterator<Item = &'k str>) {
    for key in keys {
        let set = from.get(key).filter(|item| {
            item.as_inline_table()
                .is_none_or(|headers| !headers.is_empty())
        });
        if let Some(item) = set {
            to.insert(key, item.clone());
        }
    }
}

/// What the conversion has gathered, in file order.
#[derive(Default)]
pub(super) struct Converter {
    notes: Vec<(usize, String)>,
    /// nginx upstream name → limpet upstream name (letters, digits, `_`, `-`).
    pub(super) upstream_names: HashMap<String, String>,
    /// Every limpet upstream name given out.
    pub(super) taken: HashSet<String>,
    /// Upstreams some `proxy_pass https://` names.
    pub(super) tls_upstreams: HashSet<String>,
    pub(super) upstreams: Vec<Upstream>,
    /// (addr, tls) and the name of each upstream made for a bare `proxy_pass http://host:port`.
    pub(super) synthesized: Vec<((String, bool), String)>,
    pub(super) servers: Vec<Server>,
}

impl Converter {
    /// Converts a whole file: upstream names first, so a `proxy_pass` may name an upstream defined below it.
    pub(super) fn run(directives: &[Directive]) -> Self {
        let mut c = Converter::default();
        c.find_upstream_names(directives);
        c.http_level(directives, &Table::new());
        c
    }

    /// The notes on what was not carried over, by line.
    pub(super) fn into_notes(mut self) -> Vec<String> {
        self.notes.sort_by_key(|(line, _)| *line);
        self.notes.into_iter().map(|(_, n)| n).collect()
    }

    pub(super) fn note(&mut self, d: &Directive, why: &str) {
        let text = format!("line {}: {d} ({why})", d.line);
        self.notes.push((d.line, text));
    }

    /// Notes a directive limpet has no key for, saying why when the reason is known.
    pub(super) fn unmapped(&mut self, d: &Directive) {
        let why = match (d.name.as_str(), d.args.first().map(String::as_str)) {
            ("include", _) => "included files are not followed: convert them separately",
            ("map", Some("$http_upgrade")) => "limpet handles Upgrade/Connection itself",
            ("proxy_http_version", _) => "limpet always speaks HTTP/1.1 to upstreams",
            ("proxy_buffering" | "proxy_request_buffering", _) => "limpet streams bodies",
            _ => "no limpet equivalent",
        };
        self.note(d, why);
    }

    /// The top level or an `http` block: upstreams, servers and inherited settings.
    fn http_level(&mut self, dirs: &[Directive], parent: &Table) {
        let settings = over(self.settings(dirs, false), parent);
        for d in dirs {
            match (d.name.as_str(), &d.block, d.args.as_slice()) {
                ("http", Some(block), _) => self.http_level(block, &settings),
                ("server", Some(block), _) => self.server(d, block, &settings),
                ("upstream", Some(block), [name]) => self.upstream(d, name, block),
                (name, None, _) if is_inherited(name, false) => {}
                _ => self.unmapped(d),
            }
        }
    }

    /// The inheritable directives set at one level, as limpet keys.
    pub(super) fn settings(&mut self, dirs: &[Directive], location: bool) -> Table {
        let mut t = Table::new();
        for d in dirs.iter().filter(|d| d.block.is_none()) {
            if let Some((key, kind)) = inherited(&d.name, location) {
                self.setting(&mut t, d, key, kind);
            }
        }
        t
    }

    /// One inheritable directive into `t`: headers and CIDRs add to their key, others replace it.
    fn setting(&mut self, t: &mut Table, d: &Directive, key: &str, kind: Kind) {
        let set = match (kind, d.args.as_slice()) {
            (Kind::Header, [name, val]) => {
                // Even a dropped header stops nginx from inheriting the parent's headers.
                let kept = self.header(d, name, val);
                let headers = t.entry(key).or_insert(value(InlineTable::new()));
                if let (Some(headers), Some((name, val))) = (headers.as_inline_table_mut(), kept) {
                    headers.insert(name, val.into());
                }
                return;
            }
            (Kind::Cidr, [cidr]) if !cidr.starts_with("unix:") => {
                let list = t.entry(key).or_insert(value(Array::new()));
                if let Some(list) = list.as_array_mut() {
                    list.push(cidr.as_str());
                }
                return;
            }
            (Kind::Duration, [v]) => duration(v).map(Value::from),
            (Kind::Size, [v]) => size(v).map(Value::from),
            (Kind::Text, [v]) => Some(Value::from(v.as_str())),
            _ => None,
        };
        match set {
            Some(v) => {
                t.insert(key, Item::Value(v));
            }
            None => self.note(d, "arguments limpet cannot translate"),
        }
    }

    /// A `proxy_set_header` limpet should send, or a note on why it is dropped.
    fn header<'a>(
        &mut self,
        d: &Directive,
        name: &'a str,
        val: &'a str,
    ) -> Option<(&'a str, &'a str)> {
        if native_header(name, val) {
            self.note(d, "limpet sets this header itself");
        } else if val.contains('$') {
            self.note(d, "limpet's set_header does not expand nginx variables");
        } else {
            return Some((name, val));
        }
        None
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
