//! Servers that change while running: each upstream's loaded server list, the DNS answers of its `resolve` and
//! `service` entries, and the servers on their way out.
//!
//! A server that DNS or the runtime API removes is not dropped at once: it stays in the list, draining (no new
//! sessions; its sticky sessions and tunnels go on), until it holds nothing or is confirmed down, and only then
//! leaves. Pure bookkeeping over [`Config`]; the running process turns its [`Membership::expand`] into snapshots.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use crate::config::{Config, DnsEntry, Origin, ServerSpec};

/// One server a DNS answer names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub addr: SocketAddr,
    /// The SRV weight (None for A/AAAA records: the entry's weight applies).
    pub weight: Option<u32>,
    /// An SRV record of a lower priority than the best one: used only while no primary is usable.
    pub backup: bool,
}

/// DNS answers and departing servers, by upstream.
#[derive(Default)]
pub struct Membership {
    /// The last good answer of each entry, by (upstream, entry as written).
    answers: HashMap<(String, String), Vec<Found>>,
    /// Servers removed while running, draining until they hold nothing: by upstream.
    leaving: HashMap<String, Vec<ServerSpec>>,
    /// Departed servers dropped since the last snapshot: they go now, they do not leave again.
    gone: HashSet<(String, String)>,
}

impl Membership {
    /// Records a good answer for an entry; says whether it differs from the last one.
    pub fn answer(&mut self, upstream: &str, entry: &str, mut found: Vec<Found>) -> bool {
        found.sort_by_key(|f| f.addr);
        found.dedup_by_key(|f| f.addr);
        let key = (upstream.to_string(), entry.to_string());
        if self.answers.get(&key) == Some(&found) {
            return false;
        }
        self.answers.insert(key, found);
        true
    }

    /// Forgets answers of entries and departing servers of upstreams that `base` no longer has.
    pub fn retain(&mut self, base: &Config) {
        self.answers.retain(|(up, entry), _| {
            base.upstreams
                .get(up)
                .is_some_and(|u| u.dns.iter().any(|d| &d.template.name == entry))
        });
        self.leaving.retain(|up, _| base.upstreams.contains_key(up));
    }

    /// `base` with the servers DNS named.
    pub fn named(&self, base: &Config) -> Config {
        let mut config = base.clone();
        for (name, up) in config.upstreams.iter_mut() {
            let mut names: HashSet<String> = up.servers.iter().map(|s| s.name.clone()).collect();
            for entry in &up.dns {
                let found = self
                    .answers
                    .get(&(name.clone(), entry.template.name.clone()));
                for f in found.into_iter().flatten() {
                    let spec = resolved(entry, f);
                    if names.insert(spec.name.clone()) {
                        up.servers.push(spec);
                    }
                }
            }
        }
        config
    }

    /// The running config: `base` with the servers DNS named and the servers on their way out (draining).
    #[cfg(test)]
    pub fn expand(&self, base: &Config) -> Config {
        self.with_leaving(self.named(base))
    }

    /// `named` (see [`Membership::named`]) with the servers on their way out added (draining).
    pub fn with_leaving(&self, mut config: Config) -> Config {
        for (name, up) in config.upstreams.iter_mut() {
            for spec in self.leaving.get(name).into_iter().flatten() {
                if !up.servers.iter().any(|s| s.name == spec.name) {
                    up.servers.push(spec.clone());
                }
            }
        }
        config
    }

    /// Notes the servers that were in `old` (a running config) but are not in `named` (see [`Membership::named`]):
    /// they drain before they go. Servers named again stop leaving. Says whether anything started leaving.
    pub fn note_departures(&mut self, old: &Config, named: &Config) -> bool {
        self.note_departures_of(old, named, |_| true)
    }

    /// As [`Membership::note_departures`], for the departed servers `which` selects only (the others go at once).
    pub fn note_departures_of(
        &mut self,
        old: &Config,
        named: &Config,
        which: impl Fn(&ServerSpec) -> bool,
    ) -> bool {
        let mut started = false;
        for (name, up) in &named.upstreams {
            let present: HashSet<&str> = up.servers.iter().map(|s| s.name.as_str()).collect();
            let leaving = self.leaving.entry(name.clone()).or_default();
            leaving.retain(|s| !present.contains(s.name.as_str()));
            let Some(before) = old.upstreams.get(name) else {
                continue;
            };
            for s in &before.servers {
                let gone = self.gone.contains(&(name.clone(), s.name.clone()));
                if !gone
                    && which(s)
                    && !present.contains(s.name.as_str())
                    && !leaving.iter().any(|l| l.name == s.name)
                {
                    let mut s = s.clone();
                    s.drain = true;
                    leaving.push(s);
                    started = true;
                }
            }
        }
        self.gone.clear();
        started
    }

    /// Drops the departing servers `done` says are finished; says whether any went.
    pub fn prune_leaving(&mut self, done: impl Fn(&str, &ServerSpec) -> bool) -> bool {
        let mut pruned = false;
        for (up, list) in self.leaving.iter_mut() {
            list.retain(|s| {
                let finished = done(up, s);
                if finished {
                    self.gone.insert((up.clone(), s.name.clone()));
                    pruned = true;
                }
                !finished
            });
        }
        pruned
    }

    /// Takes servers that were on their way out in another process (an upgrade's hand-over): they drain here too,
    /// until they hold nothing.
    pub fn take_leaving(&mut self, upstream: &str, servers: Vec<ServerSpec>) {
        let leaving = self.leaving.entry(upstream.to_string()).or_default();
        for mut s in servers {
            if !leaving.iter().any(|l| l.name == s.name) {
                s.drain = true;
                leaving.push(s);
            }
        }
    }

    /// Is this server on its way out?
    pub fn is_leaving(&self, upstream: &str, name: &str) -> bool {
        self.leaving
            .get(upstream)
            .is_some_and(|l| l.iter().any(|s| s.name == name))
    }
}

/// The server an answer names, with its entry's settings.
fn resolved(entry: &DnsEntry, found: &Found) -> ServerSpec {
    let mut spec = entry.template.clone();
    spec.name = found.addr.to_string();
    spec.addr = found.addr;
    spec.origin = Origin::Dns;
    if let Some(w) = found.weight {
        spec.weight = w.clamp(1, 1000);
    }
    spec.backup |= found.backup;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Lookup;

    fn config() -> Config {
        let text = r#"
[[server]]
listen = ["127.0.0.1:0"]
[[server.location]]
proxy_pass = "app"
[upstream.app]
[[upstream.app.server]]
addr = "127.0.0.1:1"
[[upstream.app.server]]
addr = "fleet.test:3000"
resolve = true
weight = 3
"#;
        crate::config::parse(text).expect("valid").config
    }

    fn found(ip: [u8; 4]) -> Found {
        Found {
            addr: SocketAddr::from((ip, 3000)),
            weight: None,
            backup: false,
        }
    }

    fn names(c: &Config) -> Vec<(String, bool)> {
        c.upstreams["app"]
            .servers
            .iter()
            .map(|s| (s.name.clone(), s.drain))
            .collect()
    }

    #[test]
    fn an_answer_adds_servers_with_the_entry_settings() {
        let base = config();
        assert_eq!(
            base.upstreams["app"].dns[0].lookup,
            Lookup::Host {
                host: "fleet.test".into(),
                port: 3000
            }
        );
        let mut m = Membership::default();
        assert!(m.answer(
            "app",
            "fleet.test:3000",
            vec![found([127, 0, 0, 3]), found([127, 0, 0, 2])]
        ));
        assert!(!m.answer(
            "app",
            "fleet.test:3000",
            vec![found([127, 0, 0, 2]), found([127, 0, 0, 3])]
        ));
        let c = m.expand(&base);
        let servers = &c.upstreams["app"].servers;
        assert_eq!(servers.len(), 3);
        assert_eq!(servers[1].name, "127.0.0.2:3000");
        assert_eq!(servers[1].weight, 3);
        assert_eq!(servers[1].origin, Origin::Dns);
    }

    #[test]
    fn a_vanished_address_drains_until_done_then_goes() {
        let base = config();
        let mut m = Membership::default();
        m.answer(
            "app",
            "fleet.test:3000",
            vec![found([127, 0, 0, 2]), found([127, 0, 0, 3])],
        );
        let before = m.expand(&base);
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 3])]);
        assert!(m.note_departures(&before, &m.named(&base)));
        let c = m.expand(&base);
        assert!(
            !m.note_departures(&c, &m.named(&base)),
            "still leaving, not again"
        );
        assert!(m.is_leaving("app", "127.0.0.2:3000"));
        assert!(names(&c).contains(&("127.0.0.2:3000".into(), true)));
        assert!(m.is_leaving("app", "127.0.0.2:3000"));
        assert!(!m.prune_leaving(|_, _| false));
        assert!(m.prune_leaving(|_, s| s.name == "127.0.0.2:3000"));
        assert!(
            !m.note_departures(&c, &m.named(&base)),
            "a server dropped does not leave again"
        );
        assert_eq!(names(&m.expand(&base)).len(), 2);
    }

    #[test]
    fn an_address_that_comes_back_stops_leaving() {
        let base = config();
        let mut m = Membership::default();
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 2])]);
        let before = m.expand(&base);
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 3])]);
        let after = m.expand(&base);
        m.note_departures(&before, &after);
        m.answer(
            "app",
            "fleet.test:3000",
            vec![found([127, 0, 0, 2]), found([127, 0, 0, 3])],
        );
        let back = m.expand(&base);
        m.note_departures(&after, &back);
        assert!(!m.is_leaving("app", "127.0.0.2:3000"));
        assert!(names(&m.expand(&base)).iter().all(|(_, drain)| !drain));
    }

    #[test]
    fn a_reload_drains_only_the_servers_it_is_told_to() {
        let base = config();
        let mut m = Membership::default();
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 2])]);
        let before = m.expand(&base);
        // The answer drops 127.0.0.2 and the reloaded config drops the file's server: only the DNS one drains.
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 3])]);
        let mut reloaded = base.clone();
        let app = reloaded.upstreams.get_mut("app").expect("app");
        app.servers.clear();
        let named = m.named(&reloaded);
        assert!(m.note_departures_of(&before, &named, |s| s.origin == Origin::Dns));
        let listed = names(&m.with_leaving(named));
        assert_eq!(
            listed,
            vec![
                ("127.0.0.3:3000".to_string(), false),
                ("127.0.0.2:3000".to_string(), true)
            ]
        );
    }

    #[test]
    fn servers_taken_from_another_process_drain_until_named_again() {
        let base = config();
        let mut m = Membership::default();
        let mut spec = base.upstreams["app"].servers[0].clone();
        spec.name = "127.0.0.9:3000".into();
        m.take_leaving("app", vec![spec.clone()]);
        m.take_leaving("app", vec![spec]);
        let listed = names(&m.expand(&base));
        assert_eq!(listed.iter().filter(|(_, drain)| *drain).count(), 1);
        assert!(m.is_leaving("app", "127.0.0.9:3000"));
        m.answer("app", "fleet.test:3000", vec![found([127, 0, 0, 9])]);
        let named = m.named(&base);
        m.note_departures(&named, &named);
        assert!(!m.is_leaving("app", "127.0.0.9:3000"));
    }
}
