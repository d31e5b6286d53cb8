//! Deadlines computed without overflow.

use std::time::Duration;

use tokio::time::Instant;

/// How far a deadline past what the clock can hold is put: never, in practice.
const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `start + after`, or a far future instead of a panic when the sum does not fit.
pub fn after(start: Instant, after: Duration) -> Instant {
    start
        .checked_add(after)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
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
}
