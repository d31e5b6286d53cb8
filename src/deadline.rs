//! Deadlines: computed without overflow, and one lazily re-armed timer for deadlines that move with progress.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How far a deadline past what the clock can hold is put: never, in practice.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `start + after`, or a far future instead of a panic when the sum does not fit.
pub fn after(start: Instant, after: Duration) -> Instant {
    start
        .checked_add(after)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

/// A timer for a deadline that moves: progress only records a time, and the timer entry is armed at the first
/// wait and reset only when it fires before the deadline or the deadline moves earlier. Traffic never touches it.
#[derive(Default)]
pub struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Timer {
    /// Ready once `deadline` has passed; otherwise the task is woken by then.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        poll_sleep_until(cx, sleep.as_mut(), deadline)
    }
}

/// [`Timer::poll_until`] on a timer entry the caller holds in place (a tunnel keeps its own inline, saving an
/// allocation per idle connection).
pub fn poll_sleep_until(
    cx: &mut Context<'_>,
    mut sleep: Pin<&mut Sleep>,
    deadline: Instant,
) -> Poll<()> {
    if deadline < sleep.deadline() {
        sleep.as_mut().reset(deadline);
    }
    loop {
        ready!(sleep.as_mut().poll(cx));
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        sleep.as_mut().reset(deadline);
    }
}

/// Silence allowed on a stream: the clock starts at the first wait after the last progress, so time spent between
/// a frame and the next poll (the other side busy, or not reading) is not a wait on this side.
pub struct Idle {
    limit: Duration,
    waiting_since: Option<Instant>,
    timer: Timer,
}

impl Idle {
    /// At most `limit` of silence.
    pub fn new(limit: Duration) -> Idle {
        Idle {
            limit,
            waiting_since: None,
            timer: Timer::default(),
        }
    }

    /// Starts over allowing `limit`, keeping the timer entry (a connection reused by the next request).
    pub fn restart(&mut self, limit: Duration) {
        self.limit = limit;
        self.waiting_since = None;
    }

    /// Something moved: the clock starts again at the next wait.
    pub fn progress(&mut self) {
        self.waiting_since = None;
    }

    /// Ready once `limit` has passed since the first wait after the last progress.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        self.timer.poll_until(cx, after(since, self.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overflows() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(after(now, Duration::MAX) > now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_follows_a_deadline_moved_either_way() {
        let start = Instant::now();
        let mut timer = Timer::default();
        let mut deadline = start + Duration::from_secs(10);
        let fired = std::future::poll_fn(|cx| {
            // Moved later while waiting, then earlier: it fires at the latest deadline set.
            if Instant::now() >= start + Duration::from_secs(5) {
                deadline = start + Duration::from_secs(7);
            } else if Instant::now() >= start + Duration::from_secs(2) {
                deadline = start + Duration::from_secs(20);
            }
            timer.poll_until(cx, deadline)
        });
        let woke = tokio::time::timeout(Duration::from_secs(60), async {
            let tick = async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            };
            tokio::join!(fired, tick);
        })
        .await;
        assert!(woke.is_ok());
        assert!(Instant::now() >= start + Duration::from_secs(7));
        assert!(Instant::now() < start + Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_counts_from_the_first_wait() {
        let mut idle = Idle::new(Duration::from_secs(3));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        std::future::poll_fn(|cx| idle.poll_expired(cx)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }
}
