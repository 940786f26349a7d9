//! 2D resources: id, format, size, zero-filled host storage charged to the VM's budget, and the
//! optional guest backing.

use std::mem::size_of;
use std::sync::Arc;

use vgpu_protocol::virtio_gpu::{Rect, ResourceCreate2d};

use super::backing::Backing;
use super::budget::{Charge, MemoryBudget};
use super::error::GpuError;
use super::format::Format;

/// Host bytes charged per resource on top of its pixels (bookkeeping: the map entry and struct,
/// and the alignment slack of the storage).
pub const RESOURCE_OVERHEAD_BYTES: u64 = 256 + size_of::<Resource2d>() as u64;

/// Alignment of the first byte of host storage. Guest pages are page-aligned, and a copy whose
/// source and destination differ in alignment within a cache line splits every vector store
/// (measured: full-frame transfers from 4 KiB pages about 12% slower into a 16-byte-aligned
/// buffer, which is what the allocator hands out for large sizes).
pub const STORAGE_ALIGN: usize = 64;

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
    /// Zero-filled storage with [`STORAGE_ALIGN`] - 1 bytes of slack; the pixels are
    /// `storage[offset..offset + len]`. Never resized, so the alignment holds.
    storage: Vec<u8>,
    offset: usize,
    len: usize,
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
        let alloc = size_usize
            .checked_add(STORAGE_ALIGN - 1)
            .ok_or(GpuError::AllocFailed(size))?;
        let mut storage = Vec::new();
        storage
            .try_reserve_exact(alloc)
            .map_err(|_| GpuError::AllocFailed(size))?;
        storage.resize(alloc, 0);
        let offset = match storage.as_ptr().align_offset(STORAGE_ALIGN) {
            off if off < STORAGE_ALIGN => off,
            _ => 0,
        };
        Ok(Resource2d {
            id: c.resource_id,
            format,
            width: c.width,
            height: c.height,
            stride,
            storage,
            offset,
            len: size_usize,
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

    /// Host storage, rows tightly packed, starting [`STORAGE_ALIGN`]-aligned.
    pub fn data(&self) -> &[u8] {
        self.storage
            .get(self.offset..self.offset + self.len)
            .unwrap_or_default()
    }

    /// Mutable host storage.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.storage
            .get_mut(self.offset..self.offset + self.len)
            .unwrap_or_default()
    }

    /// Host storage and backing together (for copying from one into the other).
    pub fn data_and_backing(&mut self) -> (&mut [u8], Option<&Backing>) {
        let data = self
            .storage
            .get_mut(self.offset..self.offset + self.len)
            .unwrap_or_default();
        (data, self.backing.as_ref().map(|b| &b.backing))
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
        assert_eq!(r.data().as_ptr() as usize % STORAGE_ALIGN, 0);
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
