//! virtio-gpu wire format and the vgpu-mediator channel protocol. No I/O.
//!
//! - [`virtio_gpu`]: the spec's structures and constants.
//! - [`command`]: decoding requests from descriptor bytes ([`decode_request`]) and encoding them.
//! - [`response`]: encoding responses ([`Response::encode`]) and decoding them.
//! - [`channel`]: our compute channel carried in SUBMIT_3D ([`decode_stream`], [`ChannelCommand`]).
//! - [`capset`]: the capset of [`VGPU_CAPSET_ID`] ([`VgpuCapset`]) and the QUERY_STATS record.
//! - [`crc32c`]: reference CRC-32C for the CRC32C kernel.

#![deny(missing_docs)]

pub mod capset;
pub mod channel;
pub mod command;
pub mod crc32c;
pub mod error;
pub mod response;
pub mod virtio_gpu;

pub use capset::{SchedPolicy, StatsRecord, VgpuCapset};
pub use channel::{
    buffer_size, decode_stream, validate_stream, ChannelCommand, ChannelError, CommandStreamIter,
    Kernel, KernelLaunch, Opcode, VGPU_CAPSET_ID, VGPU_PROTOCOL_VERSION,
};
pub use command::{decode_request, GpuCommand, MemEntries, Request};
pub use error::DecodeError;
pub use response::{decode_response, DecodedResponse, ErrorCode, Response};
