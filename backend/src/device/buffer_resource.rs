//! Buffer resources: RESOURCE_CREATE_3D resources shaped as channel buffers. The bytes live in a
//! [`DeviceBuffer`] charged to the vGPU's partition; the guest backing is only the staging area
//! TRANSFER_*_3D copy through.

use std::sync::Arc;

use crate::driver::DeviceBuffer;

use super::error::GpuError;
use super::resource::AttachedBacking;

/// A guest-created buffer.
#[derive(Debug)]
pub struct BufferResource {
    /// Device memory.
    pub buffer: Arc<DeviceBuffer>,
    /// Guest backing, if attached.
    pub staging: Option<AttachedBacking>,
    /// UUID assigned by RESOURCE_ASSIGN_UUID.
    pub uuid: Option<[u8; 16]>,
}

impl BufferResource {
    /// Wraps a freshly allocated buffer.
    pub fn new(buffer: Arc<DeviceBuffer>) -> Self {
        BufferResource {
            buffer,
            staging: None,
            uuid: None,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    /// Checks that `offset..offset + len` lies inside the buffer (`id` names it in the error).
    pub fn check_range(&self, id: u32, offset: u64, len: u64) -> Result<(), GpuError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(GpuError::RangeOutside {
                resource: id,
                offset,
                len,
                size: self.size(),
            }),
        }
    }
}
