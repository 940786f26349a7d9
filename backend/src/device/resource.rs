//! 2D resources: id, format, size, zero-filled host storage charged to the VM's budget, and the
//! optional guest backing.

use std::mem::size_of;
use std::sync::Arc;

use vgpu_protocol::virtio_gpu::{Rect, ResourceCreate2d};

use super::backing::Backing;
use super::budget::{Charge, MemoryBudget};
use super::error::GpuError;
use super::format::Format;

/// Host bytes charged per resource on top of its pixels (bookkeeping: the map entry and struct).
pub const RESOURCE_OVERHEAD_BYTES: u64 = 256 + size_of::<Resource2d>() as u64;

/// True when `r` lies inside a `width`×`height` area (checked arithmetic; empty rects allowed).
pub fn rect_inside(r: &Rect, width: u32, height: u32) -> bool {
    matches!(r.x.checked_add(r.width), Some(right) if right <= width)
        && matches!(r.y.checked_add(r.height), Some(bottom) if bottom <= height)
}

/// Guest backing together with the budget charge for its entry list.
#[derive(Debug)]
pub struct AttachedBacking {
    /// The validated entries.
    pub backing: Backing,
    _charge: Charge,
}

impl AttachedBacking {
    /// Pairs a backing with the charge paid for it.
    pub fn new(backing: Backing, charge: Charge) -> Self {
        AttachedBacking {
            backing,
            _charge: charge,
        }
    }
}

/// A guest-created 2D resource.
#[derive(Debug)]
pub struct Resource2d {
    id: u32,
    format: Format,
    width: u32,
    height: u32,
    stride: usize,
    data: Vec<u8>,
    /// Guest backing, if attached.
    pub backing: Option<AttachedBacking>,
    /// UUID assigned by RESOURCE_ASSIGN_UUID, stable until unref.
    pub uuid: Option<[u8; 16]>,
    _charge: Charge,
}

impl Resource2d {
    /// Validates a RESOURCE_CREATE_2D (not the id: the caller owns the id space), charges
    /// `budget` and allocates zero-filled storage.
    pub fn create(c: &ResourceCreate2d, budget: &Arc<dyn MemoryBudget>) -> Result<Self, GpuError> {
        let format = Format::from_virtio(c.format).ok_or(GpuError::UnknownFormat {
            resource_id: c.resource_id,
            format: c.format,
        })?;
        let invalid = GpuError::InvalidSize {
            resource_id: c.resource_id,
            width: c.width,
            height: c.height,
        };
        if c.width == 0 || c.height == 0 {
            return Err(invalid);
        }
        let bpp = u64::from(format.bytes_per_pixel());
        let stride = u64::from(c.width)
            .checked_mul(bpp)
            .ok_or_else(|| invalid.clone())?;
        let size = stride
            .checked_mul(u64::from(c.height))
            .ok_or_else(|| invalid.clone())?;
        let size_usize = usize::try_from(size).map_err(|_| invalid.clone())?;
        let stride = usize::try_from(stride).map_err(|_| invalid.clone())?;
        let charge_bytes = size.checked_add(RESOURCE_OVERHEAD_BYTES).ok_or(invalid)?;
        let charge = Charge::new(budget, charge_bytes)?;
        let mut data = Vec::new();
        data.try_reserve_exact(size_usize)
            .map_err(|_| GpuError::AllocFailed(size))?;
        data.resize(size_usize, 0);
        Ok(Resource2d {
            id: c.resource_id,
            format,
            width: c.width,
            height: c.height,
            stride,
            data,
            backing: None,
            uuid: None,
            _charge: charge,
        })
    }

    /// The guest's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Pixel format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bytes per row of host storage.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Host storage, rows tightly packed.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Mutable host storage.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// Host storage and backing together (for copying from one into the other).
    pub fn data_and_backing(&mut self) -> (&mut [u8], Option<&Backing>) {
        (&mut self.data, self.backing.as_ref().map(|b| &b.backing))
    }

    /// Checks that `r` lies inside the resource.
    pub fn check_rect(&self, r: &Rect) -> Result<(), GpuError> {
        if rect_inside(r, self.width, self.height) {
            Ok(())
        } else {
            Err(GpuError::RectOutside {
                resource_id: self.id,
                rect: *r,
                width: self.width,
                height: self.height,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::budget::HostMemoryLimit;
    use vgpu_protocol::virtio_gpu::VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM;

    fn create(w: u32, h: u32, budget: &Arc<dyn MemoryBudget>) -> Result<Resource2d, GpuError> {
        Resource2d::create(
            &ResourceCreate2d {
                resource_id: 1,
                format: VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM,
                width: w,
                height: h,
            },
            budget,
        )
    }

    #[test]
    fn charges_and_releases() {
        let budget: Arc<dyn MemoryBudget> = Arc::new(HostMemoryLimit::new(1 << 20));
        let r = create(16, 8, &budget).unwrap();
        assert_eq!(budget.used(), 16 * 8 * 4 + RESOURCE_OVERHEAD_BYTES);
        assert!(r.data().iter().all(|&b| b == 0));
        assert_eq!((r.stride(), r.data().len()), (64, 512));
        drop(r);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn rejects_bad_sizes() {
        let budget: Arc<dyn MemoryBudget> = Arc::new(HostMemoryLimit::new(u64::MAX));
        for (w, h) in [(0, 1), (1, 0)] {
            assert!(matches!(
                create(w, h, &budget).unwrap_err(),
                GpuError::InvalidSize { .. }
            ));
        }
        // 2^32 * 2^32 * 4 overflows u64 arithmetic only via usize; either way no allocation.
        assert!(create(u32::MAX, u32::MAX, &budget).is_err());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn rect_checks() {
        assert!(rect_inside(
            &Rect {
                x: 0,
                y: 0,
                width: 4,
                height: 4
            },
            4,
            4
        ));
        assert!(!rect_inside(
            &Rect {
                x: 1,
                y: 0,
                width: 4,
                height: 4
            },
            4,
            4
        ));
        assert!(!rect_inside(
            &Rect {
                x: u32::MAX,
                y: 0,
                width: 2,
                height: 1
            },
            4,
            4
        ));
    }
}
