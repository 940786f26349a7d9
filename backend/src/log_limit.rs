//! The one rate limiter for log lines a guest can cause, kept per VM, so a misbehaving guest can
//! neither flood the host log nor silence another VM's errors.
//!
//! A [`GuestLog`] belongs to one VM (its vhost-user connection): the device, the queue workers and
//! the backend glue of that VM share it through an `Arc`. It lets [`DEFAULT_LINES_PER_WINDOW`]
//! lines through per [`DEFAULT_WINDOW`], counts the rest, and reports the count with the first line
//! of a later window.
//!
//! Lines that the rust-vmm crates (virtio-queue, vhost, vhost-user-backend, vm-memory) log on a
//! guest's behalf do not pass through our code: [`crate::logging`] sends every record from another
//! crate through the [`GuestLog`] bound to the thread that logs it ([`GuestLog::bind_thread`], done
//! by the glue on the VM's vring and vhost-user threads), or through a process-wide fallback
//! limiter on threads bound to no VM.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use log::Level;

/// Lines allowed per window by default.
pub const DEFAULT_LINES_PER_WINDOW: u32 = 10;
/// Default window length.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// Log target of the lines a [`GuestLog`] writes (the logger wrapper lets them through unchanged:
/// they were counted already).
pub const GUEST_LOG_TARGET: &str = "vgpud::guest";

const COUNT_BITS: u32 = 32;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

thread_local! {
    static BOUND: RefCell<Option<Arc<GuestLog>>> = const { RefCell::new(None) };
}

/// A per-VM limiter of guest-caused log lines (thread-safe; share it with an `Arc`).
#[derive(Debug)]
pub struct GuestLog {
    label: String,
    limit: u32,
    window: Duration,
    epoch: Instant,
    /// `window number << 32 | lines in that window`.
    state: AtomicU64,
    suppressed: AtomicU64,
}

impl GuestLog {
    /// A limiter with the default rate (10 lines per second); `label` (the VM's name) prefixes
    /// every line.
    pub fn new(label: impl Into<String>) -> Self {
        Self::with_rate(label, DEFAULT_LINES_PER_WINDOW, DEFAULT_WINDOW)
    }

    /// A limiter letting `limit` lines through per `window`.
    pub fn with_rate(label: impl Into<String>, limit: u32, window: Duration) -> Self {
        GuestLog {
            label: label.into(),
            limit,
            window: window.max(Duration::from_millis(1)),
            epoch: Instant::now(),
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// The prefix of every line.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Lines suppressed since the last "suppressed" report.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Decides whether a line may be written at `now`; the first line of a new window first
    /// reports how many were suppressed before it.
    pub fn allow_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.epoch).as_nanos();
        // Window numbers wrap after 2^32 windows (136 years of 1 s windows): harmless.
        let window = ((elapsed / self.window.as_nanos()) as u64) & COUNT_MASK;
        let mut allowed = false;
        let mut rolled = false;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                let (w, count) = (s >> COUNT_BITS, s & COUNT_MASK);
                let (w_new, count) = if w == window && s != 0 {
                    (w, count)
                } else {
                    (window, 0)
                };
                rolled = w_new != w || s == 0;
                allowed = count < u64::from(self.limit);
                Some((w_new << COUNT_BITS) | (count + 1).min(COUNT_MASK))
            });
        if rolled {
            let n = self.suppressed.swap(0, Ordering::AcqRel);
            if n > 0 {
                log::warn!(
                    target: GUEST_LOG_TARGET,
                    "{}: {n} guest-caused log lines suppressed",
                    self.label
                );
            }
        }
        if !allowed {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Decides whether a line may be written now.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    /// Writes a line at `level`, prefixed with the label, unless the rate is exceeded (or the
    /// level is filtered out, which costs no budget).
    pub fn log(&self, level: Level, args: fmt::Arguments<'_>) {
        if log::log_enabled!(target: GUEST_LOG_TARGET, level) && self.allow() {
            log::log!(target: GUEST_LOG_TARGET, level, "{}: {}", self.label, args);
        }
    }

    /// Writes a warning line unless the rate is exceeded.
    pub fn warn(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Warn, args);
    }

    /// Writes an error line unless the rate is exceeded.
    pub fn error(&self, args: fmt::Arguments<'_>) {
        self.log(Level::Error, args);
    }

    /// Makes this VM's limiter the one for records other crates log on the calling thread
    /// (cheap when already bound).
    pub fn bind_thread(self: &Arc<Self>) {
        BOUND.with(|b| {
            let mut b = b.borrow_mut();
            if !b.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, self)) {
                *b = Some(Arc::clone(self));
            }
        });
    }

    /// The limiter bound to the calling thread, if any.
    pub fn bound() -> Option<Arc<GuestLog>> {
        BOUND.with(|b| b.borrow().clone())
    }

    /// The process-wide limiter for records from threads bound to no VM.
    pub fn unattributed() -> &'static GuestLog {
        static FALLBACK: OnceLock<GuestLog> = OnceLock::new();
        FALLBACK.get_or_init(|| GuestLog::new("unattributed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_counts_suppressed() {
        let l = GuestLog::with_rate("t", 3, Duration::from_secs(1));
        let t0 = l.epoch + Duration::from_millis(10);
        let allowed = (0..10).filter(|_| l.allow_at(t0)).count();
        assert_eq!(allowed, 3);
        assert_eq!(l.suppressed(), 7);
        assert!(l.allow_at(t0 + Duration::from_millis(1500)));
        assert_eq!(l.suppressed(), 0);
        l.warn(format_args!("no panic {}", 1));
    }

    #[test]
    fn each_vm_has_its_own_budget() {
        let noisy = GuestLog::with_rate("noisy", 5, Duration::from_secs(1));
        let quiet = GuestLog::with_rate("quiet", 5, Duration::from_secs(1));
        let t = noisy.epoch + Duration::from_millis(10);
        assert_eq!((0..1000).filter(|_| noisy.allow_at(t)).count(), 5);
        assert!(quiet.allow_at(t), "one VM's flood silences another");
    }

    #[test]
    fn binding_is_per_thread() {
        let a = Arc::new(GuestLog::new("a"));
        a.bind_thread();
        assert!(GuestLog::bound().is_some_and(|b| Arc::ptr_eq(&b, &a)));
        std::thread::spawn(|| assert!(GuestLog::bound().is_none()))
            .join()
            .unwrap();
    }
}
