//! Smooth weighted round robin, nginx's `ngx_http_upstream_get_peer`, precomputed.
//!
//! nginx keeps a `current_weight` per peer: each pick adds every peer's weight to its
//! `current_weight`, takes the peer with the largest (the first one on a tie) and subtracts the
//! total weight from it. With fixed weights that walk repeats with a period of the total weight, so
//! [`RoundRobin::new`] plays one period once (weights divided by their gcd first) and
//! [`RoundRobin::pick`] reads it with an atomic counter: no lock on the pick path.
//!
//! Unusable servers are skipped: a pick takes the next usable entry of the sequence and consumes
//! the entries it skipped, so over a period every usable server is still picked exactly `weight`
//! times, as in nginx (the order can differ from nginx's while a server is out, the proportions do
//! not).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{reduced_weights, Candidate, ServerView};

/// Longest precomputed period; past it, weights are scaled down proportionally (to 1 at least).
const MAX_PERIOD: u64 = 1 << 14;

/// Smooth weighted round robin over one server list.
#[derive(Debug)]
pub struct RoundRobin {
    /// One period of the smooth sequence: server indices.
    sequence: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Precomputes one period of the sequence for these servers' weights.
    pub fn new(servers: &[Candidate]) -> RoundRobin {
        let weights = fit_period(reduced_weights(servers));
        RoundRobin {
            sequence: smooth_sequence(&weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The next usable server in the sequence, or None when none is usable.
    pub fn pick(&self, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        let period = self.sequence.len();
        if period == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for skipped in 0..period {
            let index = self.sequence[start.wrapping_add(skipped) % period] as usize;
            if view.usable(index) {
                if skipped > 0 {
                    self.next.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(index);
            }
        }
        None
    }
}

/// Scales weights down proportionally when their sum exceeds [`MAX_PERIOD`].
fn fit_period(weights: Vec<u64>) -> Vec<u64> {
    let total: u64 = weights.iter().sum();
    if total <= MAX_PERIOD {
        return weights;
    }
    let scale = |w: u64| {
        ((u128::from(w) * u128::from(MAX_PERIOD) + u128::from(total / 2)) / u128::from(total))
            as u64
    };
    weights.into_iter().map(|w| scale(w).max(1)).collect()
}

/// One period of nginx's smooth weighted round robin over `weights`.
fn smooth_sequence(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for (i, &w) in weights.iter().enumerate() {
                current[i] += w as i64;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total as i64;
            best as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{servers, Fleet};
    use super::*;

    fn picks(rr: &RoundRobin, view: &Fleet, n: usize) -> Vec<Option<usize>> {
        (0..n).map(|_| rr.pick(view)).collect()
    }

    fn counts(rr: &RoundRobin, view: &Fleet, n: usize) -> Vec<usize> {
        let mut c = vec![0; view.usable.len()];
        picks(rr, view, n)
            .into_iter()
            .for_each(|p| c[p.expect("a usable server")] += 1);
        c
    }

    #[test]
    fn weights_5_1_1_give_nginx_smooth_sequence() {
        let rr = RoundRobin::new(&servers(&[5, 1, 1]));
        let (a, b, c) = (Some(0), Some(1), Some(2));
        let period = [a, a, b, a, c, a, a];
        let got = picks(&rr, &Fleet::up(3), 21);
        assert_eq!(got, period.repeat(3));
    }

    #[test]
    fn counts_over_7000_picks_are_exact() {
        let rr = RoundRobin::new(&servers(&[5, 1, 1]));
        assert_eq!(counts(&rr, &Fleet::up(3), 7000), vec![5000, 1000, 1000]);
    }

    #[test]
    fn equal_weights_alternate_in_list_order() {
        let rr = RoundRobin::new(&servers(&[3, 3, 3]));
        let got = picks(&rr, &Fleet::up(3), 6);
        assert_eq!(got, [0, 1, 2, 0, 1, 2].map(Some));
    }

    #[test]
    fn weights_are_reduced_by_their_gcd() {
        let rr = RoundRobin::new(&servers(&[10, 20, 30]));
        assert_eq!(rr.sequence.len(), 6);
        assert_eq!(counts(&rr, &Fleet::up(3), 600), vec![100, 200, 300]);
    }

    #[test]
    fn unusable_server_is_skipped_and_the_others_keep_their_ratio() {
        let rr = RoundRobin::new(&servers(&[5, 1, 1]));
        let fleet = Fleet::with_down(3, &[0]);
        let got = picks(&rr, &fleet, 6);
        assert_eq!(got, [1, 2, 1, 2, 1, 2].map(Some));

        let rr = RoundRobin::new(&servers(&[1, 2, 3]));
        assert_eq!(
            counts(&rr, &Fleet::with_down(3, &[2]), 3000),
            vec![1000, 2000, 0]
        );
        assert_eq!(
            counts(&rr, &Fleet::with_down(3, &[1]), 4000),
            vec![1000, 0, 3000]
        );
    }

    #[test]
    fn nothing_usable_is_none() {
        let rr = RoundRobin::new(&servers(&[5, 1, 1]));
        assert_eq!(
            picks(&rr, &Fleet::with_down(3, &[0, 1, 2]), 3),
            vec![None; 3]
        );
        assert_eq!(RoundRobin::new(&[]).pick(&Fleet::up(0)), None);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_the_cap() {
        let list = servers(&[1000; 40].iter().copied().chain([999]).collect::<Vec<_>>());
        let rr = RoundRobin::new(&list);
        assert!(rr.sequence.len() as u64 <= MAX_PERIOD + 41);
        let mut c = vec![0usize; 41];
        rr.sequence.iter().for_each(|&i| c[i as usize] += 1);
        assert!(c.iter().all(|n| (395..=405).contains(n)), "{c:?}");
    }

    #[test]
    fn scaling_keeps_every_server_in_the_sequence() {
        let weights: Vec<u32> = (0..100).map(|i| if i == 0 { 1 } else { 1000 }).collect();
        let rr = RoundRobin::new(&servers(&weights));
        assert!(rr.sequence.contains(&0));
    }

    #[test]
    fn counter_wraparound_stays_in_bounds() {
        let rr = RoundRobin::new(&servers(&[5, 1, 1]));
        rr.next.store(usize::MAX - 2, Ordering::Relaxed);
        let fleet = Fleet::with_down(3, &[1]);
        assert!(picks(&rr, &fleet, 10)
            .iter()
            .all(|p| matches!(p, Some(0) | Some(2))));
    }
}
