//! The per-VM completion queue: the driver's engine thread reports finished jobs here (token and
//! success), and an eventfd registered with the VM's vhost-user epoll loop wakes the queue worker
//! to answer them. Reporting never blocks on the VM: it takes only this queue's own short lock.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::device::JobNotifier;

/// Finished jobs waiting for the queue worker, and the eventfd that announces them.
pub struct CompletionQueue {
    done: Mutex<Vec<(u64, bool)>>,
    event: EventFd,
}

impl CompletionQueue {
    /// An empty queue with a non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(CompletionQueue {
            done: Mutex::new(Vec::with_capacity(64)),
            event: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
        })
    }

    /// The eventfd to register with the epoll loop (readable while completions are queued).
    pub fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Moves every queued completion into `out` (which is cleared first; buffers are swapped, so
    /// nothing is allocated once both have grown) and resets the eventfd.
    pub fn take_into(&self, out: &mut Vec<(u64, bool)>) {
        // Reset first: a completion queued after this read writes the eventfd again.
        let _ = self.event.read();
        out.clear();
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *done, out);
    }
}

impl JobNotifier for CompletionQueue {
    fn job_done(&self, token: u64, ok: bool) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((token, ok));
        let _ = self.event.write(1);
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue").finish()
    }
}
