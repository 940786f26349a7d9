//! Errors of `vgpu-smi` and the exit code of each.

use std::io;

use thiserror::Error;

/// Exit code: a result did not verify (bench, memtest).
pub const EXIT_VERIFY: i32 = 1;
/// Exit code: no virtio-gpu render node.
pub const EXIT_NO_DEVICE: i32 = 3;
/// Exit code: the device has no 3D (VIRGL) support.
pub const EXIT_NO_VIRGL: i32 = 4;
/// Exit code: the vGPU capset is missing or speaks another protocol.
pub const EXIT_PROTOCOL: i32 = 5;
/// Exit code: an ioctl or mmap failed.
pub const EXIT_IO: i32 = 6;
/// Exit code: the device did not answer as the protocol says (timeout, bad record).
pub const EXIT_DEVICE: i32 = 7;
/// Exit code: the host refused a submit (a module it does not accept, a bad binding).
pub const EXIT_REFUSED: i32 = 8;
/// Exit code: a guest kernel's launch ran out of its loop budget.
pub const EXIT_LOOP_BUDGET: i32 = 9;
/// Exit code: a job failed on the host for another reason (device lost, out of memory, ...).
pub const EXIT_JOB_FAILED: i32 = 10;
/// Exit code: the vGPU's engine does not run guest modules.
pub const EXIT_UNSUPPORTED: i32 = 11;
/// Exit code: an argument is out of range (also clap's usage errors).
pub const EXIT_USAGE: i32 = 2;

/// Everything that can go wrong talking to the vGPU.
#[derive(Debug, Error)]
pub enum Error {
    /// No `/dev/dri/renderD*` node belongs to the `virtio_gpu` driver.
    #[error("no virtio-gpu device: {0}")]
    NoDevice(String),
    /// `VIRTGPU_PARAM_3D_FEATURES` is 0: the device was not negotiated with VIRGL.
    #[error("no VIRGL: the virtio-gpu device has no 3D support (3D_FEATURES = 0); the vGPU channel needs it")]
    NoVirgl,
    /// The capset is missing or is not a protocol version this tool speaks.
    #[error("protocol mismatch: {0}")]
    Protocol(String),
    /// An ioctl or mmap failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The device did not behave as the protocol says.
    #[error("device error: {0}")]
    Device(String),
    /// A result read back from the device differs from the CPU reference.
    #[error("verification failed: {0}")]
    Verify(String),
    /// Writing output failed.
    #[error("output: {0}")]
    Output(String),
    /// The host refused a submit before anything of it ran (learnt from QUERY_STATS:
    /// `submits_refused` grew).
    #[error("the host refused {what}: {reason} (error {code:#06x})")]
    Refused {
        /// What was submitted (`module load`, `launch`).
        what: String,
        /// `VIRTIO_GPU_RESP_ERR_*` the host answered.
        code: u32,
        /// The host's reason (`StatsRecord::last_refusal`, at most 31 bytes).
        reason: String,
    },
    /// A launch ran out of its loop budget: some invocation took more loop back edges than the
    /// capset's `loop_budget`, so its loops were cut short and its results are incomplete.
    #[error("launch failed: loop budget of {budget} back edges per invocation exceeded")]
    LoopBudget {
        /// The capset's `loop_budget`.
        budget: u32,
    },
    /// A job failed on the host for another reason.
    #[error("job failed on the host: {0}")]
    JobFailed(String),
    /// The engine behind this vGPU does not run guest modules (capset `module_flags` is 0).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An argument the caller gave is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// An [`Error::Io`] for `op`.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NoDevice(_) => EXIT_NO_DEVICE,
            Error::NoVirgl => EXIT_NO_VIRGL,
            Error::Protocol(_) => EXIT_PROTOCOL,
            Error::Io { .. } | Error::Output(_) => EXIT_IO,
            Error::Device(_) => EXIT_DEVICE,
            Error::Verify(_) => EXIT_VERIFY,
            Error::Refused { .. } => EXIT_REFUSED,
            Error::LoopBudget { .. } => EXIT_LOOP_BUDGET,
            Error::JobFailed(_) => EXIT_JOB_FAILED,
            Error::Unsupported(_) => EXIT_UNSUPPORTED,
            Error::InvalidArgument(_) => EXIT_USAGE,
        }
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let errs = [
            Error::NoDevice(String::new()),
            Error::NoVirgl,
            Error::Protocol(String::new()),
            Error::io("x", io::Error::from_raw_os_error(libc::EIO)),
            Error::Device(String::new()),
            Error::Verify(String::new()),
            Error::Refused {
                what: String::new(),
                code: 0,
                reason: String::new(),
            },
            Error::LoopBudget { budget: 1 },
            Error::JobFailed(String::new()),
            Error::Unsupported(String::new()),
        ];
        let mut codes: Vec<i32> = errs.iter().map(Error::exit_code).collect();
        assert!(codes.iter().all(|&c| c != 0 && c != 2));
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), errs.len());
        assert!(Error::NoVirgl.to_string().contains("no VIRGL"));
    }
}
