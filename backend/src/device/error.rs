//! Why a guest request failed, with the offending values, and the virtio-gpu error code each
//! failure is answered with.

use thiserror::Error;
use vgpu_protocol::virtio_gpu::Rect;
use vgpu_protocol::ErrorCode;

use super::budget::OutOfBudget;
use super::launch::ModuleError;
use crate::driver::{BufferError, JobError, SubmitError};
use vgpu_protocol::ChannelError;

/// A failed virtio-gpu command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpuError {
    /// Resource id 0 was given where a resource must be created.
    #[error("resource id 0 is not allowed")]
    ResourceIdZero,
    /// The resource id is already in use.
    #[error("resource {0} already exists")]
    ResourceExists(u32),
    /// No resource has this id.
    #[error("unknown resource {0}")]
    UnknownResource(u32),
    /// The format is not one of the eight 2D formats.
    #[error("resource {resource_id}: unsupported format {format}")]
    UnknownFormat {
        /// Resource being created.
        resource_id: u32,
        /// The format given.
        format: u32,
    },
    /// Width or height is zero, or the size overflows.
    #[error("resource {resource_id}: invalid size {width}x{height}")]
    InvalidSize {
        /// Resource being created.
        resource_id: u32,
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// The VM's host memory budget refused the allocation.
    #[error("{0}")]
    OutOfBudget(#[from] OutOfBudget),
    /// The host allocator failed.
    #[error("host allocation of {0} bytes failed")]
    AllocFailed(u64),
    /// ATTACH_BACKING on a resource that already has backing.
    #[error("resource {0} already has backing attached")]
    BackingAttached(u32),
    /// The command needs backing and the resource has none.
    #[error("resource {0} has no backing attached")]
    NoBacking(u32),
    /// A backing entry is not entirely inside guest memory.
    #[error("backing entry {index} ({addr:#x}+{len:#x}) is outside guest memory")]
    BackingOutsideMemory {
        /// Entry index.
        index: usize,
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A backing entry has length 0.
    #[error("backing entry {index} at {addr:#x} has length 0")]
    BackingEmptyEntry {
        /// Entry index.
        index: usize,
        /// Guest address.
        addr: u64,
    },
    /// The backing has no entries.
    #[error("backing has no entries")]
    BackingEmpty,
    /// The backing's total length is above the limit.
    #[error("backing of {total} bytes is above the {limit}-byte limit")]
    BackingTooLarge {
        /// Total length.
        total: u64,
        /// The limit.
        limit: u64,
    },
    /// A rectangle is not inside the resource.
    #[error("resource {resource_id}: rect {rect:?} outside {width}x{height}")]
    RectOutside {
        /// Resource.
        resource_id: u32,
        /// The rectangle given.
        rect: Rect,
        /// Resource width.
        width: u32,
        /// Resource height.
        height: u32,
    },
    /// A scanout rectangle is empty.
    #[error("scanout {scanout_id}: empty rect {rect:?}")]
    EmptyScanoutRect {
        /// Scanout.
        scanout_id: u32,
        /// The rectangle given.
        rect: Rect,
    },
    /// A transfer reads past the end of the backing.
    #[error(
        "resource {resource_id}: transfer reads {offset}..{end} beyond backing of {total} bytes"
    )]
    SourceBeyondBacking {
        /// Resource.
        resource_id: u32,
        /// First byte read.
        offset: u64,
        /// One past the last byte read (`u64::MAX` on overflow).
        end: u64,
        /// Backing length.
        total: u64,
    },
    /// Guest memory could not be read (the memory map changed since the backing was attached).
    #[error("guest memory read of {len} bytes at {addr:#x} failed")]
    GuestMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// A scanout rectangle larger than the vGPU type's maximum resolution.
    #[error(
        "scanout {scanout_id}: {width}x{height} is above the maximum {max_width}x{max_height}"
    )]
    ScanoutTooLarge {
        /// Scanout.
        scanout_id: u32,
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
        /// The type's maximum width.
        max_width: u32,
        /// The type's maximum height.
        max_height: u32,
    },
    /// The scanout id is not below the number of scanouts.
    #[error("invalid scanout id {0}")]
    InvalidScanoutId(u32),
    /// GET_EDID while EDID is not enabled.
    #[error("EDID is not enabled")]
    EdidDisabled,
    /// GET_EDID for a scanout that does not exist.
    #[error("GET_EDID for invalid scanout {0}")]
    EdidScanout(u32),
    /// A capset index or id that does not exist.
    #[error("no capset {0}")]
    NoCapset(u32),
    /// GET_CAPSET for our capset id with a version we do not have.
    #[error("capset {id} has no version {version}")]
    NoCapsetVersion {
        /// Capset id.
        id: u32,
        /// Version asked for.
        version: u32,
    },
    /// A context id that is 0, unknown, or (for CTX_CREATE) already in use.
    #[error("invalid context id {0}")]
    InvalidContext(u32),
    /// CTX_CREATE asked for a capset other than ours.
    #[error("context {ctx_id}: unsupported context_init capset {capset}")]
    ContextInit {
        /// Context.
        ctx_id: u32,
        /// The capset asked for.
        capset: u32,
    },
    /// The VM already has the most contexts allowed.
    #[error("too many contexts (limit {0})")]
    TooManyContexts(usize),
    /// A RESOURCE_CREATE_3D, transfer or command stream the channel protocol rejects.
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// A 2D-only command (scanout, flush, 2D transfer) names a buffer.
    #[error("resource {0} is a buffer, not a 2D resource")]
    BufferNotAllowed(u32),
    /// A 3D command names a resource that is not a buffer.
    #[error("resource {0} is not a buffer")]
    NotABuffer(u32),
    /// A command stream names a buffer not attached to the submitting context.
    #[error("resource {resource} is not attached to context {ctx_id}")]
    NotAttached {
        /// Context.
        ctx_id: u32,
        /// Resource.
        resource: u32,
    },
    /// A byte range lies outside a buffer.
    #[error("resource {resource}: range {offset}+{len} outside {size} bytes")]
    RangeOutside {
        /// Resource.
        resource: u32,
        /// First byte.
        offset: u64,
        /// Length.
        len: u64,
        /// Buffer size.
        size: u64,
    },
    /// A transfer writes past the end of the guest backing.
    #[error("resource {resource}: backing range {offset}+{len} beyond {total} bytes")]
    BeyondBacking {
        /// Resource.
        resource: u32,
        /// First backing byte.
        offset: u64,
        /// Length.
        len: u64,
        /// Backing length.
        total: u64,
    },
    /// Guest memory could not be written.
    #[error("guest memory write of {len} bytes at {addr:#x} failed")]
    GuestMemoryWrite {
        /// Guest address.
        addr: u64,
        /// Length.
        len: usize,
    },
    /// Device memory: the vGPU's partition is full, or the buffer is unusable.
    #[error("{0}")]
    Buffer(#[from] BufferError),
    /// A guest-module command was refused (bad module, unknown id, unbound slot...).
    #[error("{0}")]
    Module(#[from] ModuleError),
    /// The driver rejected the job built from a command stream.
    #[error("{0}")]
    Job(#[from] JobError),
    /// The driver refused the submission (queue full, vGPU destroyed, shut down).
    #[error("{0}")]
    Submit(#[from] SubmitError),
    /// The vGPU is gone (destroyed or shut down).
    #[error("vGPU unavailable")]
    VgpuGone,
    /// A command this device does not implement (3D, blob, contexts).
    #[error("unsupported command {0:#x}")]
    Unsupported(u32),
    /// A cursor command arrived on the control queue.
    #[error("cursor command {0:#x} on the control queue")]
    CursorOnControlQueue(u32),
    /// The response buffer cannot hold the response.
    #[error("response of {needed} bytes does not fit in {got}")]
    ResponseTooLarge {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
}

impl GpuError {
    /// The error code the guest is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            GpuError::ResourceIdZero
            | GpuError::ResourceExists(_)
            | GpuError::UnknownResource(_)
            // QEMU (both its built-in device and its vhost-user-gpu) answers a transfer or detach
            // on a resource without backing with INVALID_RESOURCE_ID.
            | GpuError::NoBacking(_)
            | GpuError::NotABuffer(_)
            | GpuError::NotAttached { .. } => ErrorCode::InvalidResourceId,
            GpuError::InvalidContext(_) => ErrorCode::InvalidContextId,
            GpuError::Module(ModuleError::NotSupported(_)) => ErrorCode::Unspec,
            GpuError::Module(_) => ErrorCode::InvalidParameter,
            GpuError::NoCapsetVersion { .. }
            | GpuError::ContextInit { .. }
            | GpuError::Channel(_)
            | GpuError::BufferNotAllowed(_)
            | GpuError::RangeOutside { .. }
            | GpuError::BeyondBacking { .. }
            | GpuError::Job(_) => ErrorCode::InvalidParameter,
            GpuError::TooManyContexts(_) | GpuError::Submit(SubmitError::OutOfMemory(_)) => {
                ErrorCode::OutOfMemory
            }
            GpuError::Buffer(
                BufferError::OutOfMemory(_)
                | BufferError::HostAlloc(_)
                | BufferError::DeviceAlloc(_),
            ) => ErrorCode::OutOfMemory,
            GpuError::Buffer(BufferError::OutOfRange { .. }) => ErrorCode::InvalidParameter,
            GpuError::Buffer(BufferError::Poisoned | BufferError::Device(_))
            | GpuError::Submit(_)
            | GpuError::VgpuGone
            | GpuError::GuestMemoryWrite { .. } => ErrorCode::Unspec,
            GpuError::UnknownFormat { .. }
            | GpuError::InvalidSize { .. }
            | GpuError::RectOutside { .. }
            | GpuError::EmptyScanoutRect { .. }
            | GpuError::ScanoutTooLarge { .. }
            | GpuError::SourceBeyondBacking { .. }
            | GpuError::EdidScanout(_)
            | GpuError::NoCapset(_) => ErrorCode::InvalidParameter,
            GpuError::OutOfBudget(_) | GpuError::AllocFailed(_) => ErrorCode::OutOfMemory,
            GpuError::InvalidScanoutId(_) => ErrorCode::InvalidScanoutId,
            GpuError::BackingAttached(_)
            | GpuError::BackingOutsideMemory { .. }
            | GpuError::BackingEmptyEntry { .. }
            | GpuError::BackingEmpty
            | GpuError::BackingTooLarge { .. }
            | GpuError::GuestMemory { .. }
            | GpuError::EdidDisabled
            | GpuError::Unsupported(_)
            | GpuError::CursorOnControlQueue(_)
            | GpuError::ResponseTooLarge { .. } => ErrorCode::Unspec,
        }
    }
}
