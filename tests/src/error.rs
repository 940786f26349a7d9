//! Errors of the test frontend.

use thiserror::Error;

/// Why a frontend operation failed.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// A system call or socket operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The vhost-user frontend library reported an error.
    #[error("vhost-user: {0}")]
    Vhost(#[from] vhost::Error),
    /// A guest address range is outside the shared memory.
    #[error("guest range {gpa:#x}+{len} outside memory")]
    OutOfRange {
        /// Start address.
        gpa: u64,
        /// Length.
        len: usize,
    },
    /// The bump allocator has no room left.
    #[error("guest memory exhausted allocating {0} bytes")]
    OutOfMemory(u64),
    /// The virtqueue has too few free descriptors for a chain.
    #[error("virtqueue full: need {need} descriptors, {free} free")]
    QueueFull {
        /// Descriptors needed.
        need: usize,
        /// Descriptors free.
        free: usize,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The backend did something the protocol does not allow.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A caller passed a bad argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The backend process could not be started or found.
    #[error("backend: {0}")]
    Backend(String),
    /// A lock was poisoned by a panicking thread.
    #[error("lock poisoned")]
    Poisoned,
}

/// Result alias for the test frontend.
pub type Result<T> = std::result::Result<T, FrontendError>;
