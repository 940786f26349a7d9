//! The daemon's logger: `env_logger` behind a filter that rate-limits, per VM, every record other
//! crates write (virtio-queue, vhost, vhost-user-backend, vm-memory log on a guest's behalf, e.g.
//! `attempted to add out of bounds descriptor to used ring` for each bad head a guest kicks).
//!
//! Records from this crate pass unchanged: its guest-caused lines are already counted by the VM's
//! [`GuestLog`]. A record from another crate is charged to the [`GuestLog`] bound to the logging
//! thread (the VM's vring and vhost-user threads), or to [`GuestLog::unattributed`].

use log::{Log, Metadata, Record, SetLoggerError};

use crate::device::log_limit::{GuestLog, GUEST_LOG_TARGET};

/// `env_logger` plus the per-VM limit on other crates' records.
pub struct GuestLimitedLogger {
    inner: env_logger::Logger,
}

/// True for records of this crate and its binaries (not rate-limited here).
fn own_target(target: &str) -> bool {
    target == GUEST_LOG_TARGET
        || target.starts_with("vgpu_backend")
        || target == "vgpud"
        || target.starts_with("vgpud::")
}

impl GuestLimitedLogger {
    /// Wraps a built `env_logger`.
    pub fn new(inner: env_logger::Logger) -> Self {
        GuestLimitedLogger { inner }
    }

    /// Whether a record (that the filter lets through) may be written now.
    fn allowed(&self, record: &Record<'_>) -> bool {
        if own_target(record.target()) {
            return true;
        }
        match GuestLog::bound() {
            Some(vm) => vm.allow(),
            None => GuestLog::unattributed().allow(),
        }
    }
}

impl Log for GuestLimitedLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.inner.matches(record) && self.allowed(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` as `env_logger` reads it, `default_filter` otherwise.
pub fn init(default_filter: &str) -> Result<(), SetLoggerError> {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
            .build();
    let max = inner.filter();
    log::set_boxed_logger(Box::new(GuestLimitedLogger::new(inner)))?;
    log::set_max_level(max);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_targets_are_recognised() {
        assert!(own_target("vgpu_backend::vhost::queue"));
        assert!(own_target(GUEST_LOG_TARGET));
        assert!(own_target("vgpud"));
        assert!(!own_target("virtio_queue::queue"));
        assert!(!own_target("vhost_user_backend::handler"));
    }
}
