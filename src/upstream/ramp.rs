//! Slow start: whether a server still ramping up (`slow_start`) takes one particular pick.
//!
//! A ramping server that a balancer picks takes the request with a probability equal to its current share of
//! its weight; otherwise the pick goes on among the others. Round robin and least_conn draw that chance at
//! random, so the server's part of new sessions grows with its share. The hash methods draw it from the request's
//! key, so a key that moved to the server stays there as the share grows (sessions of a key do not flap).

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use siphasher::sip::SipHasher13;

use crate::balance::{Method, PickKey};

/// Does the ramping server with this `id`, at `share` of its weight, take this pick?
pub fn admits(method: Method, key: &PickKey<'_>, id: u64, share: f64) -> bool {
    let draw = match method {
        Method::IpHash | Method::Hash => keyed_draw(key, id),
        Method::RoundRobin | Method::LeastConn => random_draw(),
    };
    draw < share
}

/// A number in [0, 1) fixed by the key and the server.
fn keyed_draw(key: &PickKey<'_>, id: u64) -> f64 {
    let mut h = SipHasher13::new_with_keys(0x6c69_6d70_6574, id);
    match key {
        PickKey::Ip(ip) => match ip {
            std::net::IpAddr::V4(v4) => h.write(&v4.octets()),
            std::net::IpAddr::V6(v6) => h.write(&v6.octets()),
        },
        PickKey::Bytes(b) => h.write(b),
    }
    unit(h.finish())
}

/// A number in [0, 1) from a per-thread generator (splitmix64; no lock, no system call).
fn random_draw() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
    }
    STATE.with(|s| {
        let next = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        unit(z ^ (z >> 31))
    })
}

/// The top 53 bits of `x` as a fraction of 1.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_draws_admit_about_the_share() {
        let admitted = (0..20_000)
            .filter(|_| admits(Method::RoundRobin, &PickKey::Bytes(b""), 1, 0.25))
            .count();
        assert!((4_000..6_000).contains(&admitted), "{admitted}");
    }

    #[test]
    fn keyed_draws_are_stable_and_grow_with_the_share() {
        let keys: Vec<String> = (0..2_000).map(|i| format!("user-{i}")).collect();
        let admitted = |share: f64| -> Vec<bool> {
            keys.iter()
                .map(|k| admits(Method::Hash, &PickKey::Bytes(k.as_bytes()), 7, share))
                .collect()
        };
        let (low, high) = (admitted(0.2), admitted(0.6));
        assert_eq!(low, admitted(0.2), "the same keys each time");
        assert!(
            low.iter().zip(&high).all(|(l, h)| !l || *h),
            "a key admitted at 0.2 stays admitted at 0.6"
        );
        let n = high.iter().filter(|a| **a).count();
        assert!((1_000..1_400).contains(&n), "{n}");
    }
}
