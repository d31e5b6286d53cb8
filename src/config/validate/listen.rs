//! Listen addresses across `[[server]]` blocks and `[admin]`: no address listed twice in a block, blocks that
//! share one agree on how connections arrive, and none collides with the admin listener.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use super::Checker;
use crate::config::{Admin, ServerBlock};

pub(super) fn check_listen_conflicts(
    c: &mut Checker,
    servers: &[ServerBlock],
    admin: Option<&Admin>,
) {
    // Several [[server]] may share an address (name-based virtual hosts), but one block must not list it twice,
    // blocks sharing it must agree on TLS-ness and PROXY protocol, and the admin listener must not collide.
    let mut first_use: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (i, s) in servers.iter().enumerate() {
        let mut own = HashSet::new();
        for (j, addr) in s.listen.iter().enumerate() {
            let path = format!("server[{i}].listen[{j}]");
            if !own.insert(addr) {
                c.error(&path, format!("{addr} is listed twice"));
                continue;
            }
            if addr.port() != 0 && admin.is_some_and(|a| a.listen == *addr) {
                c.error(&path, format!("{addr} is also admin.listen"));
            }
            match first_use.get(addr) {
                None => {
                    first_use.insert(*addr, i);
                }
                Some(&k) => check_shared_listen(c, &path, addr, (k, &servers[k]), s),
            }
        }
    }
}

fn check_shared_listen(
    c: &mut Checker,
    path: &str,
    addr: &SocketAddr,
    (k, a): (usize, &ServerBlock),
    b: &ServerBlock,
) {
    let connection_settings = |s: &ServerBlock| {
        (
            s.tls.is_some(),
            s.proxy_protocol,
            s.proxy_protocol_from.clone(),
            s.max_connections_per_ip,
        )
    };
    if connection_settings(a) != connection_settings(b) {
        c.error(
            path,
            format!(
                "{addr} is also used by server[{k}] with different tls/proxy_protocol/proxy_protocol_from/max_connections_per_ip settings"
            ),
        );
    } else if a.server_name.is_empty() && b.server_name.is_empty() {
        c.error(
            path,
            format!(
                "duplicate listen address {addr}: server[{k}] listens there too and neither has a server_name to tell them apart"
            ),
        );
    }
}
