//! TRANSFER_TO_HOST_2D: copying a rectangle from the guest backing into host storage.

use vgpu_protocol::virtio_gpu::TransferToHost2d;
use vm_memory::GuestMemory;

use super::error::GpuError;
use super::resource::Resource2d;

/// Copies `t.r` from the backing into `res`.
///
/// Source row `i` starts at backing byte `t.offset + i * stride` (stride = resource width × bpp)
/// and is `t.r.width * bpp` bytes long; it lands at `(t.r.y + i) * stride + t.r.x * bpp`. Every
/// check happens before any byte is copied. Bytes go from guest memory straight into host storage.
pub fn transfer_to_host_2d<M: GuestMemory + ?Sized>(
    res: &mut Resource2d,
    mem: &M,
    t: &TransferToHost2d,
) -> Result<(), GpuError> {
    let id = res.id();
    if res.backing.is_none() {
        return Err(GpuError::NoBacking(id));
    }
    res.check_rect(&t.r)?;
    let bpp = res.format().bytes_per_pixel() as usize;
    let stride = res.stride();
    let full_width = t.r.x == 0 && t.r.width == res.width();
    let (data, backing) = res.data_and_backing();
    let backing = backing.ok_or(GpuError::NoBacking(id))?;
    if t.r.width == 0 || t.r.height == 0 {
        return Ok(());
    }
    // All of these fit: the rect is inside the resource, whose size fits in usize.
    let row_bytes = t.r.width as usize * bpp;
    let rows = t.r.height as usize;
    let dst_start = t.r.y as usize * stride + t.r.x as usize * bpp;
    // Last source byte read: offset + (rows - 1) * stride + row_bytes.
    let src_len = ((rows - 1) * stride + row_bytes) as u64;
    let src_end = t.offset.checked_add(src_len);
    if src_end.is_none_or(|end| end > backing.len()) {
        return Err(GpuError::SourceBeyondBacking {
            resource_id: id,
            offset: t.offset,
            end: src_end.unwrap_or(u64::MAX),
            total: backing.len(),
        });
    }
    if full_width {
        // Rows are contiguous on both sides: one pass.
        let dst =
            data.get_mut(dst_start..dst_start + rows * stride)
                .ok_or(GpuError::RectOutside {
                    resource_id: id,
                    rect: t.r,
                    width: 0,
                    height: 0,
                })?;
        return backing.read_into(mem, t.offset, dst);
    }
    for row in 0..rows {
        let src = t.offset + (row * stride) as u64;
        let d = dst_start + row * stride;
        let dst = data
            .get_mut(d..d + row_bytes)
            .ok_or(GpuError::RectOutside {
                resource_id: id,
                rect: t.r,
                width: 0,
                height: 0,
            })?;
        backing.read_into(mem, src, dst)?;
    }
    Ok(())
}
