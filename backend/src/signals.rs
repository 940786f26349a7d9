//! The stop signals (SIGTERM, SIGINT, SIGHUP), blocked in every thread and awaited by the main
//! one, so that `vgpud` and `vgpud-relay` end promptly and cleanly (libvirt sends SIGTERM at VM
//! stop).

use std::io;
use std::time::Duration;

/// Signals that end the daemon.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// Blocks the stop signals in this thread (and every thread spawned later), so that only
/// [`wait_signal`] receives them.
pub fn block_stop_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask only
    // reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(set)
    }
}

/// Waits up to `timeout` for one of the blocked stop signals; returns it if one arrived.
pub fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `set` is an initialised sigset, `ts` a valid timespec; no siginfo is requested.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}
