//! Consistent hashing (nginx `hash $key consistent`, ketama-style): a ring of points per server, so
//! adding or removing one server moves only about 1/N of the keys, and only to or from that server.
//!
//! Each server gets `1024 × weight` points (weights divided by their gcd first), point `i` at the
//! fixed-key SipHash-1-3 of `"{key}-{i}"`, where `key` is the server's address text. A request key
//! hashes the same way and goes to the first usable server clockwise from it. The keys are
//! constants, never `RandomState`: every limpet instance, and every restart, builds the same ring.
//! The ring itself is not nginx's (nginx uses CRC32).

use std::fmt::{self, Write as _};
use std::hash::Hasher;

use siphasher::sip::SipHasher13;

use super::{reduced_weights, Candidate, PickKey, RoundRobin, ServerView};

/// SipHash keys of the ring ("limpet-c", "onsisten"). Changing them remaps every key.
const FIXED_K0: u64 = 0x6c69_6d70_6574_2d63;
const FIXED_K1: u64 = 0x6f6e_7369_7374_656e;
/// Points per unit of (gcd-reduced) weight. nginx uses 160, which leaves one server in four of a
/// 3-server fleet more than 10% off its share; 1024 keeps them within about 5%.
const POINTS_PER_WEIGHT: u64 = 1024;
/// Ring size past which the points per unit of weight are halved (until 1): 8 MiB of ring at most,
/// reached past 512 units of weight. Crossing it (a reload that grows the fleet past it) remaps
/// about half of the keys.
const MAX_POINTS: u64 = 1 << 19;

/// A consistent-hash ring over one server list.
#[derive(Debug)]
pub struct HashRing {
    /// Sorted `(point, server index)`.
    ring: Vec<(u64, u32)>,
    /// For requests without a key.
    rr: RoundRobin,
}

impl HashRing {
    /// Builds the ring for these servers, keyed on their address text and scaled by weight.
    pub fn new(servers: &[Candidate]) -> HashRing {
        let weights = reduced_weights(servers);
        let per_weight = points_per_weight(weights.iter().sum());
        let mut ring = Vec::with_capacity(weights.iter().map(|w| (w * per_weight) as usize).sum());
        for (index, (server, weight)) in servers.iter().zip(&weights).enumerate() {
            let points =
                (0..weight * per_weight).map(|i| hash_fmt(format_args!("{}-{i}", server.key)));
            ring.extend(points.map(|point| (point, index as u32)));
        }
        ring.sort_unstable();
        HashRing {
            ring,
            rr: RoundRobin::new(servers),
        }
    }

    /// The server for this key: its place on the ring, or round robin for empty bytes.
    /// An address hashes as its text (`192.0.2.7`, `2001:db8::1`; an IPv4-mapped one as IPv4), like
    /// nginx's `$remote_addr`.
    pub fn pick(&self, key: &PickKey<'_>, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        match key {
            PickKey::Ip(ip) => self.pick_at(hash_fmt(format_args!("{}", ip.to_canonical())), view),
            PickKey::Bytes(bytes) if !bytes.is_empty() => self.pick_at(hash_bytes(bytes), view),
            PickKey::Bytes(_) => self.rr.pick(view),
        }
    }

    /// The first usable server clockwise from `hash`, going round the ring at most once.
    fn pick_at(&self, hash: u64, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        let len = self.ring.len();
        let start = self.ring.partition_point(|&(point, _)| point < hash);
        let mut last_refused = None;
        for step in 0..len {
            let index = self.ring[(start + step) % len].1 as usize;
            if last_refused == Some(index) {
                continue;
            }
            if view.usable(index) {
                return Some(index);
            }
            last_refused = Some(index);
        }
        None
    }
}

/// Points per unit of weight: [`POINTS_PER_WEIGHT`], halved while the ring would exceed
/// [`MAX_POINTS`].
fn points_per_weight(total_weight: u64) -> u64 {
    let mut per = POINTS_PER_WEIGHT;
    while per > 1 && total_weight.saturating_mul(per) > MAX_POINTS {
        per /= 2;
    }
    per
}

fn hasher() -> SipHasher13 {
    SipHasher13::new_with_keys(FIXED_K0, FIXED_K1)
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = hasher();
    h.write(bytes);
    h.finish()
}

/// The hash of formatted text, without allocating it: equal to `hash_bytes` of the text.
fn hash_fmt(args: fmt::Arguments<'_>) -> u64 {
    let mut h = TextHasher(hasher());
    // TextHasher::write_str never fails.
    let _ = h.write_fmt(args);
    h.0.finish()
}

struct TextHasher(SipHasher13);

impl fmt::Write for TextHasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{servers, splitmix, Fleet};
    use super::*;

    const KEYS: usize = 30_000;

    fn keys() -> Vec<String> {
        let mut state = 7;
        (0..KEYS)
            .map(|_| format!("client-{:016x}", splitmix(&mut state)))
            .collect()
    }

    /// The address text of each key's server.
    fn placement(list: &[Candidate], keys: &[String], view: &Fleet) -> Vec<String> {
        let ring = HashRing::new(list);
        let place = |k: &String| {
            ring.pick(&PickKey::Bytes(k.as_bytes()), view)
                .expect("a usable server")
        };
        keys.iter().map(|k| list[place(k)].key.clone()).collect()
    }

    fn share(placed: &[String], server: &str) -> f64 {
        placed.iter().filter(|p| *p == server).count() as f64 / placed.len() as f64
    }

    #[test]
    fn equal_servers_share_keys_evenly() {
        let list = servers(&[1, 1, 1]);
        let placed = placement(&list, &keys(), &Fleet::up(3));
        for s in &list {
            let share = share(&placed, &s.key);
            assert!((0.3..=0.3667).contains(&share), "{} got {share}", s.key);
        }
    }

    #[test]
    fn adding_a_server_moves_about_a_quarter_of_keys_all_to_it() {
        let keys = keys();
        let (three, four) = (servers(&[1, 1, 1]), servers(&[1, 1, 1, 1]));
        let before = placement(&three, &keys, &Fleet::up(3));
        let after = placement(&four, &keys, &Fleet::up(4));
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        let fraction = moved.len() as f64 / KEYS as f64;
        assert!((0.15..=0.35).contains(&fraction), "moved {fraction}");
        assert!(
            moved.iter().all(|(_, a)| **a == four[3].key),
            "a key moved between old servers"
        );
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let keys = keys();
        let all = servers(&[1, 1, 1, 1]);
        let without: Vec<_> = all
            .iter()
            .filter(|s| s.key != all[1].key)
            .cloned()
            .collect();
        let before = placement(&all, &keys, &Fleet::up(4));
        let after = placement(&without, &keys, &Fleet::up(3));
        for (b, a) in before.iter().zip(&after) {
            if *b != all[1].key {
                assert_eq!(a, b, "a key left a server that stayed");
            }
        }
    }

    #[test]
    fn unusable_server_sheds_only_its_keys() {
        let keys = keys();
        let list = servers(&[1, 1, 1]);
        let before = placement(&list, &keys, &Fleet::up(3));
        let after = placement(&list, &keys, &Fleet::with_down(3, &[2]));
        let mut shed = 0;
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, list[2].key);
            if *b == list[2].key {
                shed += 1;
            } else {
                assert_eq!(a, b);
            }
        }
        assert!(shed > 0);
    }

    #[test]
    fn weights_are_honoured() {
        let list = servers(&[2, 1, 1]);
        let placed = placement(&list, &keys(), &Fleet::up(3));
        let shares: Vec<f64> = list.iter().map(|s| share(&placed, &s.key)).collect();
        assert!((0.45..=0.55).contains(&shares[0]), "{shares:?}");
        assert!((1.6..=2.4).contains(&(shares[0] / shares[1])), "{shares:?}");
        assert!((1.6..=2.4).contains(&(shares[0] / shares[2])), "{shares:?}");
    }

    #[test]
    fn the_ring_depends_on_addresses_not_on_list_order() {
        let keys = keys();
        let list = servers(&[1, 2, 1]);
        let reversed: Vec<_> = list.iter().rev().cloned().collect();
        assert_eq!(
            placement(&list, &keys, &Fleet::up(3)),
            placement(&reversed, &keys, &Fleet::up(3))
        );
    }

    /// Pins the ring (keys, point names, hasher): a change here remaps every session of a running
    /// fleet.
    #[test]
    fn golden_placements() {
        let ring = HashRing::new(&servers(&[1, 1, 1]));
        let fleet = Fleet::up(3);
        let pick = |k: &str| ring.pick(&PickKey::Bytes(k.as_bytes()), &fleet);
        let got: Vec<_> = ["alice", "bob", "carol", "dave", "user-42", "192.0.2.7"]
            .map(pick)
            .to_vec();
        assert_eq!(got, GOLDEN.map(Some).to_vec());
        assert_eq!(hash_bytes(b"limpet"), GOLDEN_HASH);
    }

    /// From an independent SipHash-1-3 and ring written in Python.
    const GOLDEN: [usize; 6] = [1, 0, 0, 0, 0, 2];
    const GOLDEN_HASH: u64 = 0x33a3_b4a1_f251_b5a7;

    #[test]
    fn an_address_hashes_as_its_text() {
        let ring = HashRing::new(&servers(&[1, 1, 1, 1, 1]));
        let fleet = Fleet::up(5);
        for text in ["192.0.2.7", "10.1.2.3", "2001:db8::1", "::1"] {
            let ip: std::net::IpAddr = text.parse().expect("test address");
            let by_ip = ring.pick(&PickKey::Ip(ip), &fleet);
            assert_eq!(
                by_ip,
                ring.pick(&PickKey::Bytes(text.as_bytes()), &fleet),
                "{text}"
            );
        }
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().expect("test address");
        assert_eq!(
            ring.pick(&PickKey::Ip(mapped), &fleet),
            ring.pick(&PickKey::Bytes(b"192.0.2.7"), &fleet)
        );
        assert_eq!(
            hash_fmt(format_args!("{}-{}", "a:1", 17)),
            hash_bytes(b"a:1-17")
        );
    }

    #[test]
    fn an_empty_key_is_round_robin() {
        let ring = HashRing::new(&servers(&[1, 1, 1]));
        let fleet = Fleet::up(3);
        let got: Vec<_> = (0..3)
            .map(|_| ring.pick(&PickKey::Bytes(b""), &fleet))
            .collect();
        assert_eq!(got, [0, 1, 2].map(Some));
    }

    #[test]
    fn nothing_usable_is_none() {
        let ring = HashRing::new(&servers(&[1, 2]));
        assert_eq!(
            ring.pick(&PickKey::Bytes(b"alice"), &Fleet::with_down(2, &[0, 1])),
            None
        );
        assert_eq!(
            HashRing::new(&[]).pick(&PickKey::Bytes(b"alice"), &Fleet::up(0)),
            None
        );
    }

    #[test]
    fn ring_size_follows_weight_and_is_capped() {
        assert_eq!(HashRing::new(&servers(&[1, 3])).ring.len(), 4 * 1024);
        assert_eq!(HashRing::new(&servers(&[5, 5])).ring.len(), 2 * 1024);
        let big = HashRing::new(&servers(&[1000, 999, 998]));
        assert!(big.ring.len() as u64 <= MAX_POINTS, "{}", big.ring.len());
        assert_eq!(points_per_weight(2997), 128);
        assert_eq!(points_per_weight(u64::MAX), 1);
    }
}
