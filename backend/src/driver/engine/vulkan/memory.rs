//! Per-partition device memory: each vGPU's partition is one or more `VkDeviceMemory` blocks
//! (none larger than `maxMemoryAllocationSize`), allocated when the vGPU is created, and every
//! buffer is a `VkBuffer` bound to a first-fit range of one block. Fresh buffers are zeroed on
//! the device (`vkCmdFillBuffer`) before the guest can see them, so bytes another vGPU (or an
//! earlier buffer) left behind are never visible. Host access goes through the block's mapping,
//! or through a bounded staging buffer when the memory is not host-visible.

use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

use ash::vk;

use super::super::super::buffer::BufferError;
use super::super::{BufferStorage, EngineError, EngineMemory, PartitionArena};
use super::context::{buffer_usage, vk_err, Ctx};

/// Extra bytes per partition beyond its logical size, so alignment padding never makes an
/// allocation the partition's charge allowed fail: 1/64 of it plus 1 MiB.
fn slack(bytes: u64) -> u64 {
    bytes / 64 + (1 << 20)
}

/// Largest staging piece for host access to memory that is not host-visible.
const STAGING_PIECE: u64 = 4 << 20;

/// A mapped pointer (the mapping lives as long as the block).
#[derive(Clone, Copy)]
struct Mapped(*mut u8);
// SAFETY: the pointer is into a mapping that stays valid until the block is freed; accesses
// are to disjoint buffers or ordered by the buffer's lock.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

struct Block {
    memory: vk::DeviceMemory,
    mapped: Option<Mapped>,
    /// Free `(offset, len)` ranges, sorted, coalesced.
    free: Mutex<Vec<(u64, u64)>>,
}

impl Block {
    fn take(&self, size: u64, align: u64) -> Option<u64> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let align = align.max(1);
        let (i, start) = free.iter().enumerate().find_map(|(i, &(off, len))| {
            let start = off.checked_next_multiple_of(align)?;
            (start.checked_add(size)? <= off + len).then_some((i, start))
        })?;
        let (off, len) = free.remove(i);
        let end = start + size;
        if end < off + len {
            free.insert(i, (end, off + len - end));
        }
        if start > off {
            free.insert(i, (off, start - off));
        }
        Some(start)
    }

    fn give_back(&self, offset: u64, size: u64) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let at = free.partition_point(|&(o, _)| o < offset);
        free.insert(at, (offset, size));
        // Coalesce with the neighbours.
        if at + 1 < free.len() && free[at].0 + free[at].1 == free[at + 1].0 {
            free[at].1 += free[at + 1].1;
            free.remove(at + 1);
        }
        if at > 0 && free[at - 1].0 + free[at - 1].1 == free[at].0 {
            free[at - 1].1 += free[at].1;
            free.remove(at);
        }
    }
}

/// The engine memory of a Vulkan device (creates partition arenas).
pub(crate) struct VkMemory {
    pub ctx: Arc<Ctx>,
}

impl fmt::Debug for VkMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VkMemory")
            .field("device", &self.ctx.info.name)
            .finish()
    }
}

struct ArenaInner {
    ctx: Arc<Ctx>,
    vgpu_id: u32,
    blocks: Vec<Block>,
}

impl Drop for ArenaInner {
    fn drop(&mut self) {
        for block in &self.blocks {
            // SAFETY: every buffer holds an Arc to this arena, so none is bound any more.
            unsafe { self.ctx.device.free_memory(block.memory, None) };
        }
    }
}

/// One vGPU partition's blocks.
#[derive(Clone)]
pub(crate) struct Arena(Arc<ArenaInner>);

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VkArena")
            .field("vgpu_id", &self.0.vgpu_id)
            .field("blocks", &self.0.blocks.len())
            .finish()
    }
}

fn allocate_block(ctx: &Ctx, size: u64, type_index: u32, map: bool) -> Result<Block, EngineError> {
    let info = vk::MemoryAllocateInfo::default()
        .allocation_size(size)
        .memory_type_index(type_index);
    // SAFETY: valid allocate info; freed by the arena's Drop (or below on failure).
    unsafe {
        let memory = ctx
            .device
            .allocate_memory(&info, None)
            .map_err(|e| vk_err("vkAllocateMemory", e))?;
        let mapped = if map {
            match ctx
                .device
                .map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            {
                Ok(p) => Some(Mapped(p.cast())),
                Err(e) => {
                    ctx.device.free_memory(memory, None);
                    return Err(vk_err("vkMapMemory", e));
                }
            }
        } else {
            None
        };
        Ok(Block {
            memory,
            mapped,
            free: Mutex::new(vec![(0, size)]),
        })
    }
}

impl EngineMemory for VkMemory {
    fn create_partition(
        &self,
        vgpu_id: u32,
        bytes: u64,
    ) -> Result<Arc<dyn PartitionArena>, EngineError> {
        let ctx = &self.ctx;
        let max_block = max_allocation(ctx).max(1 << 20);
        let mut left = bytes.saturating_add(slack(bytes));
        let mut blocks = Vec::new();
        while left > 0 {
            let size = left.min(max_block);
            match allocate_block(ctx, size, ctx.buffer_type, ctx.buffer_mapped) {
                Ok(b) => blocks.push(b),
                Err(e) => {
                    for b in blocks {
                        // SAFETY: just allocated, nothing bound.
                        unsafe { ctx.device.free_memory(b.memory, None) };
                    }
                    return Err(e);
                }
            }
            left -= size;
        }
        log::info!(
            "vGPU {vgpu_id}: {} MiB of device memory in {} block(s)",
            bytes >> 20,
            blocks.len()
        );
        Ok(Arc::new(Arena(Arc::new(ArenaInner {
            ctx: Arc::clone(ctx),
            vgpu_id,
            blocks,
        }))))
    }
}

/// `maxMemoryAllocationSize` (Vulkan 1.1 maintenance3), or 1 GiB if the query is unavailable.
fn max_allocation(ctx: &Ctx) -> u64 {
    let mut m3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut m3);
    let instance = &ctx.instance.instance;
    // SAFETY: enumerate again to find our physical device by index (cheap, read-only).
    let pds = unsafe { instance.enumerate_physical_devices() }.unwrap_or_default();
    match pds.get(ctx.info.index as usize) {
        Some(&pd) => {
            // SAFETY: `pd` comes from this instance (1.1 core query).
            unsafe { instance.get_physical_device_properties2(pd, &mut props) };
            let v = m3.max_memory_allocation_size;
            if v == 0 {
                1 << 30
            } else {
                v
            }
        }
        None => 1 << 30,
    }
}

impl PartitionArena for Arena {
    fn alloc(&self, size: u64) -> Result<Box<dyn BufferStorage>, BufferError> {
        let inner = &self.0;
        let ctx = &inner.ctx;
        let vk_size = size.max(4).next_multiple_of(4);
        let info = vk::BufferCreateInfo::default()
            .size(vk_size)
            .usage(buffer_usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: valid create info; destroyed by the storage's Drop or below.
        let buffer = unsafe { ctx.device.create_buffer(&info, None) }
            .map_err(|_| BufferError::DeviceAlloc(size))?;
        // SAFETY: `buffer` is live.
        let req = unsafe { ctx.device.get_buffer_memory_requirements(buffer) };
        let destroy = || {
            // SAFETY: not bound to anything in use.
            unsafe { ctx.device.destroy_buffer(buffer, None) }
        };
        if req.memory_type_bits & (1 << ctx.buffer_type) == 0 {
            destroy();
            return Err(BufferError::DeviceAlloc(size));
        }
        let placed = inner
            .blocks
            .iter()
            .enumerate()
            .find_map(|(i, b)| b.take(req.size, req.alignment).map(|off| (i, off)));
        let Some((block_index, offset)) = placed else {
            destroy();
            return Err(BufferError::DeviceAlloc(size));
        };
        let Some(block) = inner.blocks.get(block_index) else {
            destroy();
            return Err(BufferError::DeviceAlloc(size));
        };
        // SAFETY: the range was taken from the block for this buffer alone.
        if unsafe { ctx.device.bind_buffer_memory(buffer, block.memory, offset) }.is_err() {
            block.give_back(offset, req.size);
            destroy();
            return Err(BufferError::DeviceAlloc(size));
        }
        let storage = VkStorage {
            arena: self.clone(),
            block: block_index,
            offset,
            reserved: req.size,
            buffer,
            size,
            vk_size,
        };
        // Zero it on the device before anyone can read it.
        ctx.one_shot(|cb| {
            // SAFETY: `cb` is recording; the buffer is live and not in use.
            unsafe { ctx.device.cmd_fill_buffer(cb, buffer, 0, vk::WHOLE_SIZE, 0) }
        })
        .map_err(|e| BufferError::Device(e.to_string()))?;
        Ok(Box::new(storage))
    }
}

/// One buffer: a `VkBuffer` bound to a range of a partition block.
pub(crate) struct VkStorage {
    arena: Arena,
    block: usize,
    offset: u64,
    reserved: u64,
    /// The Vulkan buffer.
    pub buffer: vk::Buffer,
    size: u64,
    /// The Vulkan buffer's size (`size` rounded up to 4).
    pub vk_size: u64,
}

impl fmt::Debug for VkStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VkStorage")
            .field("vgpu_id", &self.arena.0.vgpu_id)
            .field("block", &self.block)
            .field("offset", &self.offset)
            .field("size", &self.size)
            .finish()
    }
}

impl VkStorage {
    fn block(&self) -> Result<&Block, BufferError> {
        self.arena
            .0
            .blocks
            .get(self.block)
            .ok_or_else(|| BufferError::Device("missing block".into()))
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), BufferError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BufferError::OutOfRange {
                offset,
                len: len as u64,
                size: self.size,
            }),
        }
    }

    /// Copies between the buffer and host bytes through a staging buffer, in pieces.
    fn staged(&self, offset: u64, bytes: &mut [u8], to_device: bool) -> Result<(), BufferError> {
        let ctx = &self.arena.0.ctx;
        let piece = STAGING_PIECE.min(bytes.len() as u64).max(4);
        let block = allocate_block(ctx, piece, ctx.host_type, true)
            .map_err(|e| BufferError::Device(e.to_string()))?;
        let info = vk::BufferCreateInfo::default()
            .size(piece)
            .usage(buffer_usage())
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: the staging buffer and its memory are freed at the end of this function.
        let staging = unsafe {
            let b = ctx.device.create_buffer(&info, None);
            match b {
                Ok(b) => {
                    if ctx.device.bind_buffer_memory(b, block.memory, 0).is_err() {
                        ctx.device.destroy_buffer(b, None);
                        ctx.device.free_memory(block.memory, None);
                        return Err(BufferError::DeviceAlloc(piece));
                    }
                    b
                }
                Err(_) => {
                    ctx.device.free_memory(block.memory, None);
                    return Err(BufferError::DeviceAlloc(piece));
                }
            }
        };
        let result = (|| {
            let Some(Mapped(ptr)) = block.mapped else {
                return Err(BufferError::Device("staging not mapped".into()));
            };
            for (i, chunk) in bytes.chunks_mut(piece as usize).enumerate() {
                let at = offset + (i as u64) * piece;
                let len = chunk.len() as u64;
                let region = [vk::BufferCopy {
                    src_offset: if to_device { 0 } else { at },
                    dst_offset: if to_device { at } else { 0 },
                    size: len,
                }];
                // SAFETY: the mapping covers `piece` ≥ `len` bytes; nothing else uses it.
                let mapped = unsafe { std::slice::from_raw_parts_mut(ptr, chunk.len()) };
                if to_device {
                    mapped.copy_from_slice(chunk);
                }
                let (src, dst) = if to_device {
                    (staging, self.buffer)
                } else {
                    (self.buffer, staging)
                };
                ctx.one_shot(|cb| {
                    // SAFETY: both buffers are live; the ranges are inside them.
                    unsafe { ctx.device.cmd_copy_buffer(cb, src, dst, &region) }
                })
                .map_err(|e| BufferError::Device(e.to_string()))?;
                if !to_device {
                    chunk.copy_from_slice(mapped);
                }
            }
            Ok(())
        })();
        // SAFETY: the copies completed (or timed out, in which case leaking would be safer, but
        // the fence wait already failed the job; the device is reset before reuse).
        unsafe {
            ctx.device.destroy_buffer(staging, None);
            ctx.device.free_memory(block.memory, None);
        }
        result
    }
}

impl BufferStorage for VkStorage {
    fn with_bytes(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BufferError> {
        self.check(offset, len)?;
        let block = self.block()?;
        match block.mapped {
            Some(Mapped(ptr)) => {
                // SAFETY: the range lies inside this buffer's part of the mapped block; the
                // caller holds the buffer's lock, which orders it against the engine.
                let bytes = unsafe {
                    std::slice::from_raw_parts(ptr.add((self.offset + offset) as usize), len)
                };
                f(bytes);
            }
            None => {
                let mut bytes = vec![0u8; len];
                self.staged(offset, &mut bytes, false)?;
                f(&bytes);
            }
        }
        Ok(())
    }

    fn with_bytes_mut(
        &self,
        offset: u64,
        len: usize,
        f: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), BufferError> {
        self.check(offset, len)?;
        let block = self.block()?;
        match block.mapped {
            Some(Mapped(ptr)) => {
                // SAFETY: as in `with_bytes`, under the buffer's write lock.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(ptr.add((self.offset + offset) as usize), len)
                };
                f(bytes);
            }
            None => {
                let mut bytes = vec![0u8; len];
                self.staged(offset, &mut bytes, false)?;
                f(&mut bytes);
                self.staged(offset, &mut bytes, true)?;
            }
        }
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for VkStorage {
    fn drop(&mut self) {
        // SAFETY: the engine holds the buffer (through its job) while it is in use, so no
        // command uses it any more.
        unsafe { self.arena.0.ctx.device.destroy_buffer(self.buffer, None) };
        if let Ok(block) = self.block() {
            block.give_back(self.offset, self.reserved);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_alignment_and_coalescing() {
        let b = Block {
            memory: vk::DeviceMemory::null(),
            mapped: None,
            free: Mutex::new(vec![(0, 1024)]),
        };
        assert_eq!(b.take(100, 64), Some(0));
        assert_eq!(b.take(100, 64), Some(128));
        assert_eq!(b.take(1000, 64), None);
        b.give_back(0, 100);
        b.give_back(128, 100);
        assert_eq!(*b.free.lock().unwrap(), vec![(0, 1024)]);
        assert_eq!(b.take(1024, 256), Some(0));
    }
}
