//! Errors of decoding guest-supplied bytes.

use thiserror::Error;

use crate::virtio_gpu::{VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER, VIRTIO_GPU_RESP_ERR_UNSPEC};

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The request is shorter than its type requires.
    #[error("request type {type_:#x} truncated: needs {needed} bytes, got {got}")]
    Truncated {
        /// Command type (0 if the header itself is short).
        type_: u32,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The command type is not one of the spec's.
    #[error("unknown command type {0:#x}")]
    UnknownCommand(u32),
    /// `nr_entries` is above [`crate::command::MAX_MEM_ENTRIES`].
    #[error("nr_entries {0} above the limit")]
    TooManyEntries(u32),
    /// A field holds a value outside its range.
    #[error("request type {type_:#x}: field {field} has invalid value {value}")]
    InvalidField {
        /// Command type.
        type_: u32,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
}

impl DecodeError {
    /// The virtio-gpu response type a device answers this error with (QEMU's choices).
    pub fn response_type(&self) -> u32 {
        match self {
            DecodeError::Truncated { .. }
            | DecodeError::UnknownCommand(_)
            | DecodeError::TooManyEntries(_) => VIRTIO_GPU_RESP_ERR_UNSPEC,
            DecodeError::InvalidField { .. } => VIRTIO_GPU_RESP_ERR_INVALID_PARAMETER,
        }
    }
}
