//! Why a guest request failed, with the offending values, and the virtio-gpu error code each
//! failure is answered with.

use thiserror::Error;
use vgpu_protocol::virtio_gpu::Rect;
use vgpu_protocol::ErrorCode;

use super::budget::OutOfBudget;

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
            | GpuError::NoBacking(_) => ErrorCode::InvalidResourceId,
            GpuError::UnknownFormat { .. }
            | GpuError::InvalidSize { .. }
            | GpuError::RectOutside { .. }
            | GpuError::EmptyScanoutRect { .. }
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
