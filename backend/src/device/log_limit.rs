//! Rate limiting of guest-error log lines, so a misbehaving guest cannot flood the host log.

use std::fmt;
use std::time::{Duration, Instant};

/// Lines allowed per window by default.
pub const DEFAULT_LINES_PER_WINDOW: u32 = 10;
/// Default window length.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);

/// Lets at most `limit` warnings through per window, then counts the rest and reports the count
/// with the first line of a later window.
#[derive(Debug)]
pub struct LogLimiter {
    label: String,
    limit: u32,
    window: Duration,
    window_start: Option<Instant>,
    emitted: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter with the default rate (10 lines per second); `label` prefixes every line.
    pub fn new(label: impl Into<String>) -> Self {
        Self::with_rate(label, DEFAULT_LINES_PER_WINDOW, DEFAULT_WINDOW)
    }

    /// A limiter letting `limit` lines through per `window`.
    pub fn with_rate(label: impl Into<String>, limit: u32, window: Duration) -> Self {
        LogLimiter {
            label: label.into(),
            limit,
            window,
            window_start: None,
            emitted: 0,
            suppressed: 0,
        }
    }

    /// Changes the prefix of every line.
    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    /// Lines suppressed since the last "suppressed" report.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Decides whether a line may be written now; reports earlier suppressed lines first.
    pub fn allow_at(&mut self, now: Instant) -> bool {
        let new_window = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.window,
        };
        if new_window {
            self.window_start = Some(now);
            self.emitted = 0;
            if self.suppressed > 0 {
                log::warn!(
                    "{}: {} guest error lines suppressed",
                    self.label,
                    self.suppressed
                );
                self.suppressed = 0;
            }
        }
        if self.emitted < self.limit {
            self.emitted += 1;
            true
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            false
        }
    }

    /// Writes a warning line unless the rate is exceeded.
    pub fn warn(&mut self, args: fmt::Arguments<'_>) {
        if self.allow_at(Instant::now()) {
            log::warn!("{}: {}", self.label, args);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_counts_suppressed() {
        let mut l = LogLimiter::with_rate("t", 3, Duration::from_secs(1));
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| l.allow_at(t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed(), 7);
        assert!(l.allow_at(t0 + Duration::from_millis(1500)));
        assert_eq!(l.suppressed(), 0);
        l.warn(format_args!("no panic {}", 1));
    }
}
