//! Per-partition device memory: each vGPU's partition is one or more `VkDeviceMemory` blocks
//! (none larger than `maxMemoryAllocationSize`), allocated when the vGPU is created, and every
//! buffer is a `VkBuffer` bound to a first-fit range of one block. Fresh buffers are zeroed on
//! the device (`vkCmdFillBuffer`) before the guest can see them, so bytes another vGPU (or an
//! earlier buffer) left behind are never visible. Host access goes through the block's mapping,
//! or through a bounded staging buffer when the memory is not host-visible.
//!
//! After a device loss [`super::gpu::Gpu::recover`] makes every arena's blocks again on the new
//! device and every live buffer at the same offset, zero-filled ([`ArenaInner::prepare`],
//! [`ArenaInner::commit`]): buffer handles, sizes and charges stay, the contents are gone.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ash::vk;
use ash::vk::Handle;

use super::super::super::buffer::BufferError;
use super::super::{BufferStorage, EngineError, EngineMemory, PartitionArena};
use super::context::{buffer_usage, vk_err, Ctx};
use super::gpu::Gpu;

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
// SAFETY: the pointer is into a mapping that stays valid until the block is freed, which
// happens only under the device's write guard or when the arena goes; accesses are to disjoint
// buffers or ordered by the buffer's lock.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

/// A block's address space: first-fit free ranges (the same on every device generation).
struct Block {
    size: u64,
    /// Free `(offset, len)` ranges, sorted, coalesced.
    free: Mutex<Vec<(u64, u64)>>,
}

/// A block's memory on one device.
struct BlockMem {
    memory: vk::DeviceMemory,
    mapped: Option<Mapped>,
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
    pub gpu: Arc<Gpu>,
}

impl fmt::Debug for VkMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VkMemory")
            .field("device", &self.gpu.read().ctx().info.name)
            .finish()
    }
}

/// A live buffer, as the arena re-creates it after a device loss.
struct Live {
    block: usize,
    offset: u64,
    vk_size: u64,
    /// The `VkBuffer` handle the storage uses (swapped by a re-creation).
    handle: Arc<AtomicU64>,
}

/// An arena's objects on its current device: changed only under the device's write guard.
struct ArenaDev {
    ctx: Arc<Ctx>,
    blocks: Vec<BlockMem>,
    buffers: BTreeMap<u64, Live>,
    next_key: u64,
}

/// One partition's memory (shared by its buffers; re-created by [`Gpu::recover`]).
pub(crate) struct ArenaInner {
    gpu: Arc<Gpu>,
    vgpu_id: u32,
    blocks: Vec<Block>,
    dev: Mutex<ArenaDev>,
}

impl Drop for ArenaInner {
    fn drop(&mut self) {
        let dev = self.dev.get_mut().unwrap_or_else(|e| e.into_inner());
        for block in &dev.blocks {
            // SAFETY: every buffer holds an Arc to this arena, so none is bound any more; the
            // memory belongs to `dev.ctx` (a re-creation cannot reach a dropped arena).
            unsafe { dev.ctx.device.free_memory(block.memory, None) };
        }
    }
}

/// An arena's blocks and buffers made on a new device, not yet switched to.
pub(crate) struct Rebound {
    blocks: Vec<BlockMem>,
    buffers: Vec<(u64, vk::Buffer)>,
}

impl Rebound {
    /// Buffers re-created.
    pub fn buffers(&self) -> usize {
        self.buffers.len()
    }

    /// Destroys what was made on `ctx` (the switch was given up).
    pub fn abandon(self, ctx: &Ctx) {
        // SAFETY: made on `ctx` by `prepare`, never used.
        unsafe {
            for (_, b) in self.buffers {
                ctx.device.destroy_buffer(b, None);
            }
            for m in self.blocks {
                ctx.device.free_memory(m.memory, None);
            }
        }
    }
}

impl ArenaInner {
    fn dev(&self) -> std::sync::MutexGuard<'_, ArenaDev> {
        self.dev.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes this arena's blocks on `new`, and every live buffer at its offset, zero-filled.
    pub fn prepare(&self, new: &Ctx) -> Result<Rebound, EngineError> {
        let dev = self.dev();
        let mut made = Rebound {
            blocks: Vec::new(),
            buffers: Vec::new(),
        };
        let result = (|| {
            for b in &self.blocks {
                made.blocks.push(allocate_block(
                    new,
                    b.size,
                    new.buffer_type,
                    new.buffer_mapped,
                )?);
            }
            for (&key, live) in &dev.buffers {
                let buffer = create_buffer(new, live.vk_size)?;
                made.buffers.push((key, buffer));
                // SAFETY: `buffer` is live.
                let req = unsafe { new.device.get_buffer_memory_requirements(buffer) };
                let block = made
                    .blocks
                    .get(live.block)
                    .ok_or_else(|| EngineError::Device("missing block".into()))?;
                if req.memory_type_bits & (1 << new.buffer_type) == 0
                    || live.offset % req.alignment.max(1) != 0
                {
                    return Err(EngineError::Device(
                        "the re-created device lays buffers out differently".into(),
                    ));
                }
                // SAFETY: the range is this buffer's alone, as on the old device.
                unsafe {
                    new.device
                        .bind_buffer_memory(buffer, block.memory, live.offset)
                }
                .map_err(|e| vk_err("vkBindBufferMemory", e))?;
            }
            new.one_shot(|cb| {
                for &(_, buffer) in &made.buffers {
                    // SAFETY: `cb` is recording; every buffer is live and bound.
                    unsafe { new.device.cmd_fill_buffer(cb, buffer, 0, vk::WHOLE_SIZE, 0) };
                }
            })
        })();
        match result {
            Ok(()) => Ok(made),
            Err(e) => {
                made.abandon(new);
                Err(e)
            }
        }
    }

    /// Switches to what [`Self::prepare`] made on `new`: the old buffers and memory are
    /// destroyed and freed on the old device.
    pub fn commit(&self, rebound: Rebound, new: &Arc<Ctx>) {
        let mut dev = self.dev();
        let old = Arc::clone(&dev.ctx);
        // SAFETY: under the device's write guard: nothing uses the old objects.
        unsafe {
            for live in dev.buffers.values() {
                let b = vk::Buffer::from_raw(live.handle.load(Ordering::Acquire));
                old.device.destroy_buffer(b, None);
            }
            for m in &dev.blocks {
                old.device.free_memory(m.memory, None);
            }
        }
        for (key, buffer) in rebound.buffers {
            if let Some(live) = dev.buffers.get(&key) {
                live.handle.store(buffer.as_raw(), Ordering::Release);
            }
        }
        dev.blocks = rebound.blocks;
        dev.ctx = Arc::clone(new);
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

fn allocate_block(
    ctx: &Ctx,
    size: u64,
    type_index: u32,
    map: bool,
) -> Result<BlockMem, EngineError> {
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
        Ok(BlockMem { memory, mapped })
    }
}

fn create_buffer(ctx: &Ctx, size: u64) -> Result<vk::Buffer, EngineError> {
    let info = vk::BufferCreateInfo::default()
        .size(size)
        .usage(buffer_usage())
        .sharing_mode(vk::SharingMode::EXCLUSIVE);
    // SAFETY: valid create info; the caller destroys it.
    unsafe { ctx.device.create_buffer(&info, None) }.map_err(|e| vk_err("vkCreateBuffer", e))
}

impl EngineMemory for VkMemory {
    fn health(&self) -> super::super::DeviceHealth {
        self.gpu.health()
    }

    fn create_partition(
        &self,
        vgpu_id: u32,
        bytes: u64,
    ) -> Result<Arc<dyn PartitionArena>, EngineError> {
        let guard = self.gpu.live()?;
        let ctx = guard.ctx();
        let max_block = max_allocation(ctx).max(1 << 20);
        let mut left = bytes.saturating_add(slack(bytes));
        let mut blocks = Vec::new();
        let mut mems = Vec::new();
        while left > 0 {
            let size = left.min(max_block);
            match allocate_block(ctx, size, ctx.buffer_type, ctx.buffer_mapped) {
                Ok(b) => {
                    mems.push(b);
                    blocks.push(Block {
                        size,
                        free: Mutex::new(vec![(0, size)]),
                    });
                }
                Err(e) => {
                    for b in mems {
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
        let inner = Arc::new(ArenaInner {
            gpu: Arc::clone(&self.gpu),
            vgpu_id,
            blocks,
            dev: Mutex::new(ArenaDev {
                ctx: Arc::clone(ctx),
                blocks: mems,
                buffers: BTreeMap::new(),
                next_key: 0,
            }),
        });
        self.gpu.register(&inner);
        drop(guard);
        Ok(Arc::new(Arena(inner)))
    }
}

/// `maxMemoryAllocationSize` (Vulkan 1.1 maintenance3), or 1 GiB if the query is unavailable.
fn max_allocation(ctx: &Ctx) -> u64 {
    let mut m3 = vk::PhysicalDeviceMaintenance3Properties::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut m3);
    // SAFETY: `physical` comes from this instance (1.1 core query).
    unsafe {
        ctx.instance
            .instance
            .get_physical_device_properties2(ctx.physical, &mut props)
    };
    match m3.max_memory_allocation_size {
        0 => 1 << 30,
        v => v,
    }
}

fn device_err(e: EngineError) -> BufferError {
    BufferError::Device(e.to_string())
}

impl PartitionArena for Arena {
    fn alloc(&self, size: u64) -> Result<Box<dyn BufferStorage>, BufferError> {
        let inner = &self.0;
        let guard = inner.gpu.live().map_err(device_err)?;
        let ctx = guard.ctx();
        let vk_size = size.max(4).next_multiple_of(4);
        let buffer = create_buffer(ctx, vk_size).map_err(|_| BufferError::DeviceAlloc(size))?;
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
        let mut dev = inner.dev();
        let memory = dev.blocks.get(block_index).map(|m| m.memory);
        // SAFETY: the range was taken from the block for this buffer alone; under the guard
        // the arena's memory is on `ctx`.
        let bound = memory.is_some_and(|memory| unsafe {
            ctx.device
                .bind_buffer_memory(buffer, memory, offset)
                .is_ok()
        });
        if !bound {
            drop(dev);
            if let Some(block) = inner.blocks.get(block_index) {
                block.give_back(offset, req.size);
            }
            destroy();
            return Err(BufferError::DeviceAlloc(size));
        }
        let key = dev.next_key;
        dev.next_key += 1;
        let handle = Arc::new(AtomicU64::new(buffer.as_raw()));
        dev.buffers.insert(
            key,
            Live {
                block: block_index,
                offset,
                vk_size,
                handle: Arc::clone(&handle),
            },
        );
        drop(dev);
        let storage = VkStorage {
            arena: self.clone(),
            key,
            block: block_index,
            offset,
            reserved: req.size,
            handle,
            size,
            vk_size,
        };
        // Zero it on the device before anyone can read it.
        ctx.one_shot(|cb| {
            // SAFETY: `cb` is recording; the buffer is live and not in use.
            unsafe { ctx.device.cmd_fill_buffer(cb, buffer, 0, vk::WHOLE_SIZE, 0) }
        })
        .map_err(device_err)?;
        Ok(Box::new(storage))
    }
}

/// One buffer: a `VkBuffer` bound to a range of a partition block.
pub(crate) struct VkStorage {
    arena: Arena,
    key: u64,
    block: usize,
    offset: u64,
    reserved: u64,
    handle: Arc<AtomicU64>,
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
    /// The Vulkan buffer on the current device: use it only while holding a device guard
    /// (a re-creation swaps it).
    pub fn buffer(&self) -> vk::Buffer {
        vk::Buffer::from_raw(self.handle.load(Ordering::Acquire))
    }

    fn mapped(&self) -> Option<Mapped> {
        self.arena
            .0
            .dev()
            .blocks
            .get(self.block)
            .and_then(|b| b.mapped)
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
    fn staged(
        &self,
        ctx: &Ctx,
        offset: u64,
        bytes: &mut [u8],
        to_device: bool,
    ) -> Result<(), BufferError> {
        let piece = STAGING_PIECE.min(bytes.len() as u64).max(4);
        let block = allocate_block(ctx, piece, ctx.host_type, true).map_err(device_err)?;
        let staging = match create_buffer(ctx, piece) {
            Ok(b) => {
                // SAFETY: fresh buffer and memory of the right size.
                if unsafe { ctx.device.bind_buffer_memory(b, block.memory, 0) }.is_err() {
                    // SAFETY: both unused.
                    unsafe {
                        ctx.device.destroy_buffer(b, None);
                        ctx.device.free_memory(block.memory, None);
                    }
                    return Err(BufferError::DeviceAlloc(piece));
                }
                b
            }
            Err(_) => {
                // SAFETY: unused.
                unsafe { ctx.device.free_memory(block.memory, None) };
                return Err(BufferError::DeviceAlloc(piece));
            }
        };
        let this = self.buffer();
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
                    (staging, this)
                } else {
                    (this, staging)
                };
                ctx.one_shot(|cb| {
                    // SAFETY: both buffers are live; the ranges are inside them.
                    unsafe { ctx.device.cmd_copy_buffer(cb, src, dst, &region) }
                })
                .map_err(device_err)?;
                if !to_device {
                    chunk.copy_from_slice(mapped);
                }
            }
            Ok(())
        })();
        // SAFETY: the copies completed, or the device is lost or hung (marked so; it is
        // re-created, never used again).
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
        let guard = self.arena.0.gpu.live().map_err(device_err)?;
        match self.mapped() {
            Some(Mapped(ptr)) => {
                // SAFETY: the range lies inside this buffer's part of the mapped block, which
                // stays mapped while the guard is held; the caller holds the buffer's lock,
                // which orders it against the engine.
                let bytes = unsafe {
                    std::slice::from_raw_parts(ptr.add((self.offset + offset) as usize), len)
                };
                f(bytes);
            }
            None => {
                let mut bytes = vec![0u8; len];
                self.staged(guard.ctx(), offset, &mut bytes, false)?;
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
        let guard = self.arena.0.gpu.live().map_err(device_err)?;
        match self.mapped() {
            Some(Mapped(ptr)) => {
                // SAFETY: as in `with_bytes`, under the buffer's write lock.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(ptr.add((self.offset + offset) as usize), len)
                };
                f(bytes);
            }
            None => {
                let mut bytes = vec![0u8; len];
                self.staged(guard.ctx(), offset, &mut bytes, false)?;
                f(&mut bytes);
                self.staged(guard.ctx(), offset, &mut bytes, true)?;
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
        let inner = &self.arena.0;
        {
            // Under a guard: a re-creation does not run meanwhile (it re-creates registered
            // buffers), and the handle is on the arena's device.
            let _guard = inner.gpu.read();
            let mut dev = inner.dev();
            dev.buffers.remove(&self.key);
            // SAFETY: the engine holds the buffer (through its job) while it is in use, so no
            // command uses it any more.
            unsafe { dev.ctx.device.destroy_buffer(self.buffer(), None) };
        }
        if let Some(block) = inner.blocks.get(self.block) {
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
            size: 1024,
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
