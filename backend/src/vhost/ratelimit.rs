//! A log rate limiter for guest-triggered messages: a guest must not be able to flood the host log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets at most `per_second` events through in each wall-clock second.
#[derive(Debug)]
pub struct LogRateLimiter {
    per_second: u64,
    /// `second << 20 | count` packed in one atomic.
    state: AtomicU64,
}

const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl LogRateLimiter {
    /// A limiter letting `per_second` events through per second.
    pub const fn new(per_second: u64) -> Self {
        LogRateLimiter {
            per_second,
            state: AtomicU64::new(0),
        }
    }

    /// True if the caller may log now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut allowed = false;
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                let (sec, count) = (s >> COUNT_BITS, s & COUNT_MASK);
                let (sec, count) = if sec == now { (sec, count) } else { (now, 0) };
                allowed = count < self.per_second;
                Some((sec << COUNT_BITS) | (count + 1).min(COUNT_MASK))
            });
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_second() {
        let l = LogRateLimiter::new(3);
        let n = (0..10).filter(|_| l.allow()).count();
        // A second boundary may fall inside the loop: at most two windows.
        assert!((3..=6).contains(&n), "{n}");
    }
}
