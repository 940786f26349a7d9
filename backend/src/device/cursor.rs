//! The cursor queue: UPDATE_CURSOR (new image from a 64×64 resource, or hide) and MOVE_CURSOR.

use std::collections::HashMap;

use vgpu_protocol::virtio_gpu::UpdateCursor;

use super::display::{DisplaySink, CURSOR_IMAGE_BYTES};
use super::resource::Resource2d;

/// Width and height every cursor image has.
pub const CURSOR_SIZE: u32 = 64;

/// Why a cursor command was ignored (cursor commands get no response, only a log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// The scanout id is out of range.
    #[error("cursor on invalid scanout {0}")]
    InvalidScanout(u32),
    /// The image resource does not exist.
    #[error("cursor image resource {0} does not exist")]
    UnknownResource(u32),
    /// The image resource is not 64×64.
    #[error("cursor image resource {resource_id} is {width}x{height}, not 64x64")]
    WrongSize {
        /// Resource.
        resource_id: u32,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
    /// A control command arrived on the cursor queue.
    #[error("control command {0:#x} on the cursor queue")]
    NotACursorCommand(u32),
}

/// Cursor state of one device: a reused image buffer.
#[derive(Debug)]
pub struct Cursor {
    image: Box<[u8; CURSOR_IMAGE_BYTES]>,
}

impl Default for Cursor {
    fn default() -> Self {
        Self::new()
    }
}

impl Cursor {
    /// A cursor with a blank image buffer.
    pub fn new() -> Self {
        Cursor {
            image: Box::new([0u8; CURSOR_IMAGE_BYTES]),
        }
    }

    /// UPDATE_CURSOR: resource 0 hides the cursor; otherwise the 64×64 resource's pixels become
    /// the image (converted to B, G, R, A) at the given position.
    pub fn update(
        &mut self,
        c: &UpdateCursor,
        num_scanouts: u32,
        resources: &HashMap<u32, Resource2d>,
        sink: &mut dyn DisplaySink,
    ) -> Result<(), CursorError> {
        let scanout = c.pos.scanout_id;
        if scanout >= num_scanouts {
            return Err(CursorError::InvalidScanout(scanout));
        }
        if c.resource_id == 0 {
            sink.cursor_hide(scanout);
            return Ok(());
        }
        let res = resources
            .get(&c.resource_id)
            .ok_or(CursorError::UnknownResource(c.resource_id))?;
        if res.width() != CURSOR_SIZE || res.height() != CURSOR_SIZE {
            return Err(CursorError::WrongSize {
                resource_id: c.resource_id,
                width: res.width(),
                height: res.height(),
            });
        }
        res.format().convert_row(res.data(), &mut self.image[..]);
        sink.cursor_update(scanout, c.pos.x, c.pos.y, c.hot_x, c.hot_y, &self.image);
        Ok(())
    }

    /// MOVE_CURSOR: moves the cursor; like QEMU, a move carrying resource 0 hides it.
    pub fn move_to(
        &mut self,
        c: &UpdateCursor,
        num_scanouts: u32,
        sink: &mut dyn DisplaySink,
    ) -> Result<(), CursorError> {
        let scanout = c.pos.scanout_id;
        if scanout >= num_scanouts {
            return Err(CursorError::InvalidScanout(scanout));
        }
        if c.resource_id == 0 {
            sink.cursor_hide(scanout);
        } else {
            sink.cursor_move(scanout, c.pos.x, c.pos.y);
        }
        Ok(())
    }
}
