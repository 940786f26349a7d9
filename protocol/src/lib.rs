//! virtio-gpu wire format and the vgpu-mediator channel protocol. No I/O.
//!
//! - [`virtio_gpu`]: the spec's structures and constants.
//! - [`command`]: decoding requests from descriptor bytes ([`decode_request`]) and encoding them.
//! - [`response`]: encoding responses ([`Response::encode`]) and decoding them.

#![deny(missing_docs)]

pub mod command;
pub mod error;
pub mod response;
pub mod virtio_gpu;

pub use command::{decode_request, GpuCommand, MemEntries, Request};
pub use error::DecodeError;
pub use response::{decode_response, DecodedResponse, ErrorCode, Response};
