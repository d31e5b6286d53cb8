//! The converted config as a TOML document: servers with their locations, then upstreams with their
//! servers, and the comments that tell the reader what to check.

use std::collections::HashSet;

use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Key, Table};

/// A limpet `[[server]]`: its keys, then its `[[server.location]]` tables.
pub(super) struct Server {
    pub(super) fields: Table,
    pub(super) locations: Vec<Table>,
}

/// A limpet `[upstream.NAME]`: its keys, then its `[[upstream.NAME.server]]` tables.
pub(super) struct Upstream {
    pub(super) name: String,
    pub(super) fields: Table,
    pub(super) servers: Vec<Table>,
}

const HEADER: &str = "# Converted from nginx by `limpet convert-nginx`.\n\
                      # Review it, and run `limpet --check` on it, before use.\n\n";

/// The limpet config; `tls_upstreams` are the upstreams some `proxy_pass https://` names.
pub(super) fn document(
    servers: &[Server],
    upstreams: &[Upstream],
    tls_upstreams: &HashSet<String>,
) -> DocumentMut {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(HEADER);
    if !servers.is_empty() {
        let all: ArrayOfTables = servers.iter().map(server).collect();
        doc.insert("server", Item::ArrayOfTables(all));
    }
    if !upstreams.is_empty() {
        let mut all = Table::new();
        all.set_implicit(true);
        for u in upstreams {
            let tls = tls_upstreams.contains(&u.name);
            all.insert(&u.name, Item::Table(upstream(u, tls)));
        }
        doc.insert("upstream", Item::Table(all));
    }
    doc
}

/// A server's table with its locations under it.
fn server(s: &Server) -> Table {
    let mut t = s.fields.clone();
    insert_tables(&mut t, "location", &s.locations);
    t
}

/// An upstream's table, its `balance` preceded by how to make it sticky by Socket.IO session.
fn upstream(u: &Upstream, tls: bool) -> Table {
    let mut t = u.fields.clone();
    if let Some(mut balance) = t.key_mut("balance") {
        balance.leaf_decor_mut().set_prefix(sid_hint(&u.name));
    }
    if tls {
        t.insert("tls", value(true));
    }
    insert_tables(&mut t, "server", &u.servers);
    t
}

/// `[[key]]` tables under `t`, if there are any.
fn insert_tables(t: &mut Table, key: &str, tables: &[Table]) {
    if !tables.is_empty() {
        t.insert(key, Item::ArrayOfTables(tables.iter().cloned().collect()));
    }
}

/// The comment pointing at limpet's Engine.IO session stickiness, which nginx has no equivalent of.
fn sid_hint(name: &str) -> String {
    let key = Key::new(name);
    let key = key.display_repr();
    format!(
        "# Socket.IO: balance = \"sid\" (with [upstream.{key}.sticky]) keeps each\n\
         # Engine.IO session on its node without relying on the client address.\n"
    )
}
