//! The open streams of an HTTP/2 client connection, so the connection can close once it has carried none for
//! its idle timeout. A stream is open from its request until its response body ends, and a tunnel it became
//! counts until the tunnel ends. Only the moves between none and some wake the connection's idle watch, so a busy
//! connection's streams do not wake it one by one.

use std::sync::atomic::{AtomicUsize, Ordering::AcqRel, Ordering::Acquire};
use std::sync::Arc;

use tokio::sync::Notify;

/// The count of open streams and a wake-up for the connection's idle watch.
#[derive(Default)]
pub struct Streams {
    open: AtomicUsize,
    changed: Notify,
}

impl Streams {
    /// Counts a stream open until the guard is dropped.
    pub fn open(self: &Arc<Streams>) -> StreamGuard {
        if self.open.fetch_add(1, AcqRel) == 0 {
            self.changed.notify_one();
        }
        StreamGuard(self.clone())
    }

    /// Streams open now.
    pub fn count(&self) -> usize {
        self.open.load(Acquire)
    }

    /// Resolves after the count next leaves or reaches zero (at once, when it did since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// One open stream.
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, AcqRel) == 1 {
            self.0.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_wakes_when_the_count_leaves_or_reaches_zero() {
        let streams = Arc::new(Streams::default());
        let wait = || tokio::time::timeout(std::time::Duration::from_secs(5), streams.changed());
        let a = streams.open();
        wait().await.expect("none to some wakes the watch");
        let b = streams.open();
        drop(a);
        assert_eq!(streams.count(), 1);
        drop(b);
        assert_eq!(streams.count(), 0);
        // The wake-up of some to none is kept for the next wait.
        wait().await.expect("some to none wakes the watch");
    }
}
