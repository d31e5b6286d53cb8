//! nginx's `ip_hash` (`ngx_http_upstream_ip_hash_module.c`, `ngx_http_upstream_get_ip_hash_peer`),
//! bit for bit, so a client lands on the same server index under limpet as under nginx with the
//! same server list.

use std::net::IpAddr;

use super::{weights, Candidate, PickKey, RoundRobin, ServerView};

/// nginx's starting hash value.
const SEED: u64 = 89;
/// nginx falls back to round robin once this many hash rounds have failed (`++tries > 20`): 21
/// rounds in all.
const MAX_FAILED_ROUNDS: u32 = 20;

/// nginx-compatible client-address hashing over one server list.
///
/// The exact equivalence with nginx:
/// - the hashed bytes are the first three octets of an IPv4 address (`a.b.c` of `a.b.c.d`, so a /24
///   sticks together) or all 16 bytes of an IPv6 one; an IPv4-mapped IPv6 address
///   (`::ffff:a.b.c.d`, what a dual-stack listener reports) counts as IPv4, as nginx's default
///   IPv6-only listeners would see it;
/// - `hash` starts at 89; each round does, for each byte, `hash = (hash * 113 + byte) % 6271`, then
///   takes `w = hash % total_weight` (configured weights, not reduced) and walks the list
///   subtracting weights until `w` is below the current server's weight; that server is the pick if
///   usable;
/// - otherwise the next round continues from the current `hash`; after 21 failed rounds (nginx:
///   `++tries > 20`) the pick falls back to smooth weighted round robin.
///
/// Differences: nginx's retry of a failed request continues the same chain where it stopped; limpet
/// restarts it, and the tried server, now unusable in the view, costs one of the rounds.
/// `PickKey::Bytes` (no client address) uses round robin. As in nginx, a hash is
/// below 6271, so servers beyond a total weight of 6271 are reached only by the round-robin
/// fallback.
#[derive(Debug)]
pub struct IpHash {
    weights: Vec<u64>,
    total: u64,
    rr: RoundRobin,
}

impl IpHash {
    /// ip_hash over these servers with their configured weights.
    pub fn new(servers: &[Candidate]) -> IpHash {
        let weights = weights(servers);
        let total = weights.iter().sum();
        IpHash {
            weights,
            total,
            rr: RoundRobin::new(servers),
        }
    }

    /// The server for this client address; round robin without one. None when none is usable.
    pub fn pick(&self, key: &PickKey<'_>, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        match key {
            PickKey::Ip(ip) => self.pick_ip(*ip, view).or_else(|| self.rr.pick(view)),
            PickKey::Bytes(_) => self.rr.pick(view),
        }
    }

    /// The hash rounds; None when all of them hit an unusable server.
    fn pick_ip(&self, ip: IpAddr, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let (bytes, len) = hashed_bytes(ip);
        let mut hash = SEED;
        for _ in 0..=MAX_FAILED_ROUNDS {
            hash = bytes[..len]
                .iter()
                .fold(hash, |h, &b| (h * 113 + u64::from(b)) % 6271);
            let index = self.server_at(hash % self.total);
            if view.usable(index) {
                return Some(index);
            }
        }
        None
    }

    /// The server whose weight span holds `w` (`w < total`).
    fn server_at(&self, mut w: u64) -> usize {
        for (index, &weight) in self.weights.iter().enumerate() {
            if w < weight {
                return index;
            }
            w -= weight;
        }
        self.weights.len() - 1
    }
}

/// The bytes nginx hashes for this address, and how many of them.
fn hashed_bytes(ip: IpAddr) -> ([u8; 16], usize) {
    let mut bytes = [0u8; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            bytes[..3].copy_from_slice(&v4.octets()[..3]);
            (bytes, 3)
        }
        IpAddr::V6(v6) => (v6.octets(), 16),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{servers, Fleet};
    use super::*;
    use std::cell::Cell;

    fn ip(text: &str) -> PickKey<'static> {
        PickKey::Ip(text.parse().expect("test address"))
    }

    fn pick(weights: &[u32], addr: &str) -> Option<usize> {
        IpHash::new(&servers(weights)).pick(&ip(addr), &Fleet::up(weights.len()))
    }

    /// From a Python transcription of nginx's C loop, and by hand for 192.168.1.x:
    /// 89 → 3978 (192) → 4441 (168) → 154 (1); 154 % 3 = 1; 154 % 6 = 4 → past server 0 (w 1) and
    /// 1 (w 2) → server 2.
    #[test]
    fn golden_indices_with_equal_weights() {
        let cases = [
            ("192.168.1.10", 1),
            ("10.0.0.1", 0),
            ("172.16.5.4", 1),
            ("8.8.8.8", 2),
            ("203.0.113.77", 0),
            ("2001:db8::1", 2),
            ("::1", 2),
            ("fe80::1234:5678", 0),
        ];
        for (addr, expected) in cases {
            assert_eq!(pick(&[1, 1, 1], addr), Some(expected), "{addr}");
        }
    }

    #[test]
    fn golden_indices_with_weights_1_2_3() {
        let cases = [
            ("192.168.1.10", 2),
            ("10.0.0.1", 2),
            ("172.16.5.4", 2),
            ("8.8.8.8", 2),
            ("203.0.113.77", 0),
            ("2001:db8::1", 1),
            ("::1", 2),
            ("fe80::1234:5678", 2),
        ];
        for (addr, expected) in cases {
            assert_eq!(pick(&[1, 2, 3], addr), Some(expected), "{addr}");
        }
    }

    #[test]
    fn same_slash_24_same_server() {
        let first = pick(&[1, 1, 1, 1, 1], "198.51.100.1");
        for last in [2, 77, 128, 254] {
            assert_eq!(pick(&[1, 1, 1, 1, 1], &format!("198.51.100.{last}")), first);
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        assert_eq!(
            pick(&[1, 2, 3], "::ffff:192.168.1.10"),
            pick(&[1, 2, 3], "192.168.1.10")
        );
        assert_eq!(pick(&[1, 1, 1], "::ffff:10.0.0.1"), Some(0));
    }

    #[test]
    fn ipv6_uses_all_sixteen_bytes() {
        let b = IpHash::new(&servers(&[1; 7]));
        let fleet = Fleet::up(7);
        let spread: std::collections::HashSet<_> = (1..=32)
            .map(|last| b.pick(&ip(&format!("2001:db8::{last:x}")), &fleet))
            .collect();
        assert!(spread.len() > 1, "the last byte must change the server");
    }

    /// 192.168.1.x: the rounds give 154, 5654, 1196, 723 → servers 1, 2, 2, 0 of three equal ones.
    #[test]
    fn rehashes_from_the_current_hash_when_the_server_is_unusable() {
        let b = IpHash::new(&servers(&[1, 1, 1]));
        let addr = ip("192.168.1.10");
        assert_eq!(b.pick(&addr, &Fleet::with_down(3, &[1])), Some(2));
        assert_eq!(b.pick(&addr, &Fleet::with_down(3, &[1, 2])), Some(0));
        assert_eq!(b.pick(&addr, &Fleet::with_down(3, &[0, 1])), Some(2));
    }

    #[test]
    fn falls_back_to_round_robin_after_21_rounds() {
        // Weights 1,1000: none of the 21 rounds for 192.168.1.x gives hash % 1001 == 0, the span of
        // server 0.
        let b = IpHash::new(&servers(&[1, 1000]));
        assert_eq!(
            b.pick(&ip("192.168.1.10"), &Fleet::with_down(2, &[1])),
            Some(0)
        );

        let b = IpHash::new(&servers(&[1, 1, 1]));
        let view = Counting {
            asked: Cell::new(0),
        };
        assert_eq!(b.pick(&ip("192.168.1.10"), &view), None);
        assert_eq!(
            view.asked.get(),
            21 + 3,
            "21 hash rounds, then one round-robin period"
        );
    }

    /// Nothing usable; counts how often it was asked.
    struct Counting {
        asked: Cell<usize>,
    }

    impl ServerView for Counting {
        fn usable(&self, _: usize) -> bool {
            self.asked.set(self.asked.get() + 1);
            false
        }
        fn load(&self, _: usize) -> u64 {
            0
        }
    }

    #[test]
    fn no_address_is_round_robin() {
        let b = IpHash::new(&servers(&[1, 1, 1]));
        let fleet = Fleet::up(3);
        let got: Vec<_> = (0..6)
            .map(|_| b.pick(&PickKey::Bytes(b""), &fleet))
            .collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn nothing_usable_is_none() {
        let b = IpHash::new(&servers(&[1, 2, 3]));
        assert_eq!(
            b.pick(&ip("192.168.1.10"), &Fleet::with_down(3, &[0, 1, 2])),
            None
        );
        assert_eq!(
            IpHash::new(&[]).pick(&ip("192.168.1.10"), &Fleet::up(0)),
            None
        );
    }
}
