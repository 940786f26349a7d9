//! Channel buffers: RESOURCE_CREATE_3D resources shaped as a gallium `PIPE_BUFFER`, and 3D
//! transfers on them.

use super::{ChannelError, PIPE_BUFFER, PIPE_FORMAT_R8_UNORM};
use crate::virtio_gpu::{ResourceCreate3d, Transfer3d};

/// The RESOURCE_CREATE_3D body of a `size`-byte channel buffer `resource_id`: target
/// `PIPE_BUFFER`, format 0, `width` = size, height = depth = array_size = 1, nothing else set
/// (what [`buffer_size`] accepts).
pub fn buffer_create(resource_id: u32, size: u32) -> ResourceCreate3d {
    ResourceCreate3d {
        resource_id,
        target: PIPE_BUFFER,
        width: size,
        height: 1,
        depth: 1,
        array_size: 1,
        ..Default::default()
    }
}

/// Validates that a RESOURCE_CREATE_3D describes a channel buffer and returns its size in bytes:
/// target `PIPE_BUFFER`, format 0 or `R8_UNORM`, `width` = size (> 0), height = depth = array_size
/// = 1, last_level = 0, nr_samples = 0. `bind` and `flags` are ignored.
pub fn buffer_size(c: &ResourceCreate3d) -> Result<u64, ChannelError> {
    let checks: [(&'static str, u32, bool); 7] = [
        ("target", c.target, c.target == PIPE_BUFFER),
        (
            "format",
            c.format,
            c.format == 0 || c.format == PIPE_FORMAT_R8_UNORM,
        ),
        ("height", c.height, c.height == 1),
        ("depth", c.depth, c.depth == 1),
        ("array_size", c.array_size, c.array_size == 1),
        ("last_level", c.last_level, c.last_level == 0),
        ("nr_samples", c.nr_samples, c.nr_samples == 0),
    ];
    if let Some((field, value, _)) = checks.iter().find(|(_, _, ok)| !ok) {
        return Err(ChannelError::NotABuffer {
            field,
            value: u64::from(*value),
        });
    }
    if c.width == 0 {
        return Err(ChannelError::NotABuffer {
            field: "width",
            value: 0,
        });
    }
    Ok(u64::from(c.width))
}

/// A TRANSFER_TO_HOST_3D / TRANSFER_FROM_HOST_3D on a channel buffer, as byte ranges.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BufferTransfer {
    /// First byte in the resource (`box.x`).
    pub resource_offset: u64,
    /// First byte in the guest backing (`offset`).
    pub backing_offset: u64,
    /// Bytes to move (`box.w`).
    pub len: u64,
}

/// Interprets a 3D transfer on a channel buffer: `box = {x: resource offset, w: length, y = z = 0,
/// h = d = 1}`, `level = 0`, `offset` = offset in the backing; `stride`/`layer_stride` are ignored.
/// The caller still checks both ranges against the buffer size and the backing length.
pub fn buffer_transfer(t: &Transfer3d) -> Result<BufferTransfer, ChannelError> {
    let b = &t.box_;
    let checks: [(&'static str, u32, bool); 5] = [
        ("box.y", b.y, b.y == 0),
        ("box.z", b.z, b.z == 0),
        ("box.h", b.h, b.h == 1),
        ("box.d", b.d, b.d == 1),
        ("level", t.level, t.level == 0),
    ];
    if let Some((field, value, _)) = checks.iter().find(|(_, _, ok)| !ok) {
        return Err(ChannelError::NotABuffer {
            field,
            value: u64::from(*value),
        });
    }
    if t.offset.checked_add(u64::from(b.w)).is_none() {
        return Err(ChannelError::NotABuffer {
            field: "offset",
            value: t.offset,
        });
    }
    Ok(BufferTransfer {
        resource_offset: u64::from(b.x),
        backing_offset: t.offset,
        len: u64::from(b.w),
    })
}
