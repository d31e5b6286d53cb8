//! Warnings that a request can trigger, each kind logged at most once a second, with the count of those held
//! back in between: a failing fleet fills no disk.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::now_ms;

/// Lets one warning of its kind through per second.
pub struct WarnLimit {
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl WarnLimit {
    pub const fn new() -> WarnLimit {
        WarnLimit {
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last one logged)` when this warning may be logged now; None when it is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now + 1000, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Relaxed));
        }
        self.held_back.fetch_add(1, Relaxed);
        None
    }
}

impl Default for WarnLimit {
    fn default() -> WarnLimit {
        WarnLimit::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_a_second_with_the_count_held_back() {
        let limit = WarnLimit::new();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(limit.allow(), Some(2));
        assert_eq!(limit.allow(), None);
    }
}
