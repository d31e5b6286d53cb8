//! Least connections, nginx's `least_conn`: the usable server with the fewest active
//! requests+tunnels per unit of weight; among servers tied on that, weighted round robin (nginx
//! does the same), driven by an atomic counter.

use std::cmp::Ordering as Cmp;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{weights, Candidate, ServerView};

/// Least connections over one server list.
#[derive(Debug)]
pub struct LeastConn {
    weights: Vec<u64>,
    /// Rotates the choice among tied servers.
    next: AtomicUsize,
}

/// A usable server's load and weight at pick time.
#[derive(Clone, Copy)]
struct Seen {
    index: usize,
    load: u64,
    weight: u64,
}

impl LeastConn {
    /// Least connections over these servers' weights.
    pub fn new(servers: &[Candidate]) -> LeastConn {
        LeastConn {
            weights: weights(servers),
            next: AtomicUsize::new(0),
        }
    }

    /// The usable server with the lowest load/weight, rotating among ties; None when none is
    /// usable.
    pub fn pick(&self, view: &(impl ServerView + ?Sized)) -> Option<usize> {
        let (best, tied_weight) = self.best(view)?;
        if tied_weight == best.weight {
            return Some(best.index);
        }
        let point = self.next.fetch_add(1, Ordering::Relaxed) as u64 % tied_weight;
        Some(self.tie_at(point, best, view).unwrap_or(best.index))
    }

    /// The first least-loaded usable server and the total weight of the servers tied with it.
    fn best(&self, view: &(impl ServerView + ?Sized)) -> Option<(Seen, u64)> {
        let mut best: Option<(Seen, u64)> = None;
        for seen in self.usable(view) {
            best = match best {
                None => Some((seen, seen.weight)),
                Some((b, tied)) => match compare(seen, b) {
                    Cmp::Less => Some((seen, seen.weight)),
                    Cmp::Equal => Some((b, tied + seen.weight)),
                    Cmp::Greater => Some((b, tied)),
                },
            };
        }
        best
    }

    /// The tied server whose share of the tied weight holds `point`. Loads may have moved since
    /// [`Self::best`]: then there may be none.
    fn tie_at(
        &self,
        mut point: u64,
        best: Seen,
        view: &(impl ServerView + ?Sized),
    ) -> Option<usize> {
        for seen in self
            .usable(view)
            .filter(|s| compare(*s, best) == Cmp::Equal)
        {
            if point < seen.weight {
                return Some(seen.index);
            }
            point -= seen.weight;
        }
        None
    }

    fn usable<'a, V: ServerView + ?Sized>(
        &'a self,
        view: &'a V,
    ) -> impl Iterator<Item = Seen> + 'a {
        self.weights
            .iter()
            .enumerate()
            .filter(|(index, _)| view.usable(*index))
            .map(|(index, &weight)| Seen {
                index,
                load: view.load(index),
                weight,
            })
    }
}

/// Orders servers by load/weight, without division: `load_a * weight_b` against `load_b *
/// weight_a`.
fn compare(a: Seen, b: Seen) -> Cmp {
    let lhs = u128::from(a.load) * u128::from(b.weight);
    let rhs = u128::from(b.load) * u128::from(a.weight);
    lhs.cmp(&rhs)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{servers, Fleet};
    use super::*;

    fn fleet(loads: &[u64]) -> Fleet {
        Fleet {
            usable: vec![true; loads.len()],
            loads: loads.to_vec(),
        }
    }

    fn picks(lc: &LeastConn, view: &Fleet, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| lc.pick(view).expect("a usable server"))
            .collect()
    }

    #[test]
    fn prefers_the_lowest_load() {
        let lc = LeastConn::new(&servers(&[1, 1, 1]));
        assert_eq!(picks(&lc, &fleet(&[5, 2, 9]), 4), vec![1; 4]);
    }

    #[test]
    fn compares_load_per_unit_of_weight() {
        let lc = LeastConn::new(&servers(&[1, 3, 2]));
        // 4/1, 9/3 = 3, 5/2 = 2.5
        assert_eq!(lc.pick(&fleet(&[4, 9, 5])), Some(2));
        // 4/1, 6/3 = 2, 5/2 = 2.5
        assert_eq!(lc.pick(&fleet(&[4, 6, 5])), Some(1));
    }

    #[test]
    fn rotates_among_ties() {
        let lc = LeastConn::new(&servers(&[1, 1, 1, 1]));
        assert_eq!(
            picks(&lc, &fleet(&[0, 0, 0, 0]), 8),
            vec![0, 1, 2, 3, 0, 1, 2, 3]
        );
        // only servers 1 and 3 are tied for least: they alternate, 0 and 2 are never picked
        let got = picks(&lc, &fleet(&[3, 1, 2, 1]), 8);
        assert_eq!(got.iter().filter(|&&i| i == 1).count(), 4);
        assert_eq!(got.iter().filter(|&&i| i == 3).count(), 4);
    }

    #[test]
    fn ties_follow_weights() {
        let lc = LeastConn::new(&servers(&[5, 1, 1]));
        let got = picks(&lc, &fleet(&[5, 1, 1]), 700);
        let count = |s| got.iter().filter(|&&i| i == s).count();
        assert_eq!((count(0), count(1), count(2)), (500, 100, 100));
    }

    #[test]
    fn skips_unusable_servers() {
        let lc = LeastConn::new(&servers(&[1, 1, 1]));
        let view = Fleet {
            usable: vec![false, true, true],
            loads: vec![0, 7, 3],
        };
        assert_eq!(lc.pick(&view), Some(2));
        let view = Fleet {
            usable: vec![true, true, false],
            loads: vec![4, 4, 0],
        };
        assert_eq!(picks(&lc, &view, 4).iter().filter(|&&i| i == 2).count(), 0);
    }

    #[test]
    fn nothing_usable_is_none() {
        let lc = LeastConn::new(&servers(&[1, 1]));
        assert_eq!(lc.pick(&Fleet::with_down(2, &[0, 1])), None);
        assert_eq!(LeastConn::new(&[]).pick(&Fleet::up(0)), None);
    }

    #[test]
    fn huge_loads_do_not_overflow() {
        let lc = LeastConn::new(&servers(&[1000, 1]));
        assert_eq!(lc.pick(&fleet(&[u64::MAX, u64::MAX / 999])), Some(0));
        assert_eq!(lc.pick(&fleet(&[u64::MAX, u64::MAX / 1001])), Some(1));
    }
}
