//! Server selection inside one server list: pure, synchronous, lock-free on the pick path.
//!
//! One file per method, each matching its nginx counterpart:
//! - `round_robin`: smooth weighted round robin, precomputed into a sequence read with an atomic
//!   counter;
//! - `least_conn`: fewest active requests+tunnels per unit of weight, weighted round robin among
//!   ties;
//! - `ip_hash`: nginx's `ip_hash`, bit for bit;
//! - `hash`: a consistent-hash ring keyed with a fixed-key SipHash.
//!
//! An upstream builds one [`Balancer`] over its primaries and one over its backups, and hands each
//! pick a [`ServerView`] of the servers' live state. Indices are positions in the `servers` slice
//! given to [`Balancer::new`]. Every pick returns only a server the view calls usable, or `None`.
//!
//! A weight of 0 counts as 1 (the config rejects it anyway).

mod hash;
mod ip_hash;
mod least_conn;
mod round_robin;

pub use hash::HashRing;
pub use ip_hash::IpHash;
pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;

use std::net::IpAddr;

/// Balancing method of an upstream (everything but `sid`, which is built on top of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Fewest active requests+tunnels per unit of weight.
    LeastConn,
    /// nginx-compatible client-address hash.
    IpHash,
    /// Consistent hash of the request key.
    Hash,
}

/// One server as the balancer sees it, in the order of the upstream's list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Configured weight (1..=1000); 0 counts as 1.
    pub weight: u32,
    /// Its address text, e.g. "127.0.0.1:3001": the consistent-hash ring is keyed on it.
    pub key: String,
}

/// What a pick needs from the request.
#[derive(Clone, Copy, Debug)]
pub enum PickKey<'a> {
    /// The client address (`ip_hash`, or `hash` over `$remote_addr`).
    Ip(IpAddr),
    /// The value of `hash_key`; empty bytes mean no key, as in nginx.
    Bytes(&'a [u8]),
}

/// Live view of the servers at pick time (health, load); implemented by the upstream module.
pub trait ServerView {
    /// Can this server take a new request now (not down, not draining, under max_conns, not already
    /// tried)?
    fn usable(&self, index: usize) -> bool;
    /// Active requests + tunnels on this server right now.
    fn load(&self, index: usize) -> u64;
}

/// The balancer of one server list, built once per config snapshot.
#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    IpHash(IpHash),
    Hash(HashRing),
}

impl Balancer {
    /// Builds the balancer for `servers`; an empty list is valid and never picks anything.
    pub fn new(method: Method, servers: &[Candidate]) -> Balancer {
        match method {
            Method::RoundRobin => Balancer::RoundRobin(RoundRobin::new(servers)),
            Method::LeastConn => Balancer::LeastConn(LeastConn::new(servers)),
            Method::IpHash => Balancer::IpHash(IpHash::new(servers)),
            Method::Hash => Balancer::Hash(HashRing::new(servers)),
        }
    }

    /// Index (into the `servers` given to `new`) of the server for this request, or None when no
    /// server is usable.
    pub fn pick(&self, key: &PickKey<'_>, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        match self {
            Balancer::RoundRobin(b) => b.pick(view),
            Balancer::LeastConn(b) => b.pick(view),
            Balancer::IpHash(b) => b.pick(key, view),
            Balancer::Hash(b) => b.pick(key, view),
        }
    }
}

/// Effective weights: as configured, 0 counted as 1.
fn weights(servers: &[Candidate]) -> Vec<u64> {
    servers.iter().map(|s| u64::from(s.weight.max(1))).collect()
}

/// Effective weights divided by their greatest common divisor (2,4,6 → 1,2,3).
fn reduced_weights(servers: &[Candidate]) -> Vec<u64> {
    let mut w = weights(servers);
    let g = w.iter().copied().fold(0, gcd);
    if g > 1 {
        w.iter_mut().for_each(|x| *x /= g);
    }
    w
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Candidate, ServerView};

    /// Servers named s0, s1, … with the given weights.
    pub fn servers(weights: &[u32]) -> Vec<Candidate> {
        let key = |i| format!("10.0.0.{i}:3000");
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate {
                weight,
                key: key(i + 1),
            })
            .collect()
    }

    /// A fixed view: which servers are usable and their loads.
    pub struct Fleet {
        pub usable: Vec<bool>,
        pub loads: Vec<u64>,
    }

    impl Fleet {
        pub fn up(n: usize) -> Fleet {
            Fleet {
                usable: vec![true; n],
                loads: vec![0; n],
            }
        }
        pub fn with_down(n: usize, down: &[usize]) -> Fleet {
            let mut f = Fleet::up(n);
            down.iter().for_each(|&i| f.usable[i] = false);
            f
        }
    }

    impl ServerView for Fleet {
        fn usable(&self, index: usize) -> bool {
            self.usable[index]
        }
        fn load(&self, index: usize) -> u64 {
            self.loads[index]
        }
    }

    /// Deterministic pseudo-random u64s (splitmix64), for key sets in tests.
    pub fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{servers, Fleet};
    use super::*;

    const METHODS: [Method; 4] = [
        Method::RoundRobin,
        Method::LeastConn,
        Method::IpHash,
        Method::Hash,
    ];

    fn keys() -> [PickKey<'static>; 3] {
        let ip = IpAddr::from([192, 0, 2, 7]);
        [
            PickKey::Ip(ip),
            PickKey::Bytes(b"user-42"),
            PickKey::Bytes(b""),
        ]
    }

    #[test]
    fn no_candidates_never_picks() {
        for method in METHODS {
            let b = Balancer::new(method, &[]);
            for key in keys() {
                assert_eq!(b.pick(&key, &Fleet::up(0)), None, "{method:?} {key:?}");
            }
        }
    }

    #[test]
    fn nothing_usable_is_none_for_every_method_and_key() {
        let list = servers(&[1, 2, 3]);
        for method in METHODS {
            let b = Balancer::new(method, &list);
            for key in keys() {
                assert_eq!(
                    b.pick(&key, &Fleet::with_down(3, &[0, 1, 2])),
                    None,
                    "{method:?} {key:?}"
                );
            }
        }
    }

    #[test]
    fn only_usable_servers_are_picked() {
        let list = servers(&[1, 2, 3, 1]);
        let fleet = Fleet::with_down(4, &[1, 2]);
        for method in METHODS {
            let b = Balancer::new(method, &list);
            for key in keys() {
                for _ in 0..50 {
                    let got = b.pick(&key, &fleet);
                    assert!(
                        matches!(got, Some(0) | Some(3)),
                        "{method:?} {key:?} picked {got:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn works_through_a_trait_object() {
        let b = Balancer::new(Method::LeastConn, &servers(&[1, 1]));
        let view: &dyn ServerView = &Fleet {
            usable: vec![true, true],
            loads: vec![3, 1],
        };
        assert_eq!(b.pick(&PickKey::Bytes(b""), view), Some(1));
    }

    #[test]
    fn weights_are_reduced_by_gcd_and_zero_counts_as_one() {
        assert_eq!(reduced_weights(&servers(&[2, 4, 6])), vec![1, 2, 3]);
        assert_eq!(reduced_weights(&servers(&[0, 3])), vec![1, 3]);
        assert_eq!(reduced_weights(&[]), Vec::<u64>::new());
    }
}
