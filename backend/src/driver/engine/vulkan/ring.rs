//! The submission ring: a few slots, each with its own command buffer, fence, descriptor pool,
//! partials buffer and timestamp query pair, so that the next piece of an operation is on the
//! queue while the host waits for (and reads back) the previous one.
//!
//! A piece in flight holds a [`DevicePin`] on every buffer it touches: a buffer whose job was
//! cancelled, or whose vGPU was destroyed, cannot be freed (and its memory handed to another
//! vGPU) before the device finished with it, whatever happens to the operation's state, and
//! host reads and writes of the buffer that would race with the piece wait for it. Pins
//! are dropped only once the piece's fence signalled (or the device was lost); a piece whose
//! fence wait timed out stays in the ring with them until a later wait succeeds, and a ring
//! dropped with such a piece leaks its pins and objects rather than free memory the device may
//! still write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ash::vk;

use super::context::{vk_err, Ctx};
use super::{create_scratch, Planned, Scratch, MAX_PARTIALS};
use crate::driver::buffer::DevicePin;
use crate::driver::engine::EngineError;
use crate::driver::module::CompiledModule;

/// Most pieces one operation may have in flight.
pub const MAX_PIPELINE_DEPTH: usize = 4;

/// The per-slot objects one piece is recorded into.
pub(super) struct Slot {
    pub cb: vk::CommandBuffer,
    pub fence: vk::Fence,
    pub descriptor_pool: vk::DescriptorPool,
    /// Host-visible results of reduce and crc32c pieces.
    pub partials: Scratch,
}

/// A submitted piece.
pub(super) struct InFlight {
    pub slot: usize,
    /// The operation it belongs to ([`super::VkOpState`]'s id).
    pub op: u64,
    pub planned: Planned,
    pub submitted_at: Instant,
    /// Buffers the piece touches, kept alive (and host access that would race with it held
    /// off) until it completed.
    pins: Vec<DevicePin>,
    /// The guest pipeline the piece runs, kept alive until it completed.
    keep: Option<Arc<dyn CompiledModule>>,
}

/// A completed piece, with its device time (from timestamps; `None` without them).
pub(super) struct Done {
    pub piece: InFlight,
    pub device_ns: Option<u64>,
    /// Host clock estimate of its run time (from the later of its submission and the previous
    /// completion to now), for devices without timestamps.
    pub host_ns: u64,
}

/// The ring (owned by the engine, used by its thread only).
pub(super) struct Ring {
    ctx: Arc<Ctx>,
    command_pool: vk::CommandPool,
    query_pool: vk::QueryPool,
    slots: Vec<Slot>,
    free: Vec<usize>,
    queue: VecDeque<InFlight>,
    /// Most pieces seen in flight at once.
    max_seen: usize,
    last_done: Instant,
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

impl Ring {
    /// A ring of `depth` slots (clamped to 1..=[`MAX_PIPELINE_DEPTH`]).
    pub fn new(ctx: &Arc<Ctx>, depth: usize) -> Result<Self, EngineError> {
        let depth = depth.clamp(1, MAX_PIPELINE_DEPTH);
        let d = &ctx.device;
        let pool_sizes = [vk::DescriptorPoolSize::default()
            .ty(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(16)];
        // SAFETY: valid create infos on a live device; everything made here is destroyed in
        // Drop (a failure part-way leaks what was made until the device goes away).
        unsafe {
            let command_pool = d
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(ctx.queue_family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(|e| vk_err("vkCreateCommandPool", e))?;
            let query_pool = d
                .create_query_pool(
                    &vk::QueryPoolCreateInfo::default()
                        .query_type(vk::QueryType::TIMESTAMP)
                        .query_count(2 * depth as u32),
                    None,
                )
                .map_err(|e| vk_err("vkCreateQueryPool", e))?;
            let cbs = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(command_pool)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(depth as u32),
                )
                .map_err(|e| vk_err("vkAllocateCommandBuffers", e))?;
            let mut slots = Vec::with_capacity(depth);
            for cb in cbs {
                let fence = d
                    .create_fence(&vk::FenceCreateInfo::default(), None)
                    .map_err(|e| vk_err("vkCreateFence", e))?;
                let descriptor_pool = d
                    .create_descriptor_pool(
                        &vk::DescriptorPoolCreateInfo::default()
                            .max_sets(4)
                            .pool_sizes(&pool_sizes),
                        None,
                    )
                    .map_err(|e| vk_err("vkCreateDescriptorPool", e))?;
                let partials = create_scratch(ctx, MAX_PARTIALS * 4, ctx.host_type)?;
                slots.push(Slot {
                    cb,
                    fence,
                    descriptor_pool,
                    partials,
                });
            }
            Ok(Self {
                ctx: Arc::clone(ctx),
                command_pool,
                query_pool,
                free: (0..slots.len()).rev().collect(),
                slots,
                queue: VecDeque::new(),
                max_seen: 0,
                last_done: Instant::now(),
            })
        }
    }

    /// Slots in the ring.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Pieces in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Most pieces seen in flight at once.
    pub fn max_seen(&self) -> usize {
        self.max_seen
    }

    /// The operation the oldest piece belongs to.
    pub fn oldest_op(&self) -> Option<u64> {
        self.queue.front().map(|p| p.op)
    }

    /// Whether `op` has pieces in flight.
    pub fn has(&self, op: u64) -> bool {
        self.queue.iter().any(|p| p.op == op)
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub fn query_pool(&self) -> vk::QueryPool {
        self.query_pool
    }

    /// A free slot to record into (`None` when every slot is in flight).
    pub fn acquire(&mut self) -> Option<usize> {
        self.free.pop()
    }

    /// Gives back a slot that was not submitted, or whose piece completed and was read.
    pub fn release(&mut self, slot: usize) {
        if slot < self.slots.len() && !self.free.contains(&slot) {
            self.free.push(slot);
        }
    }

    /// Submits the command buffer recorded in `slot` as a piece of operation `op` that touches
    /// `pins`. On failure the slot is free again and nothing is in flight.
    pub fn submit(
        &mut self,
        slot: usize,
        op: u64,
        planned: Planned,
        pins: Vec<DevicePin>,
        keep: Option<Arc<dyn CompiledModule>>,
    ) -> Result<(), EngineError> {
        let cbs = [self.slots[slot].cb];
        let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
        // The command buffer is fully recorded; the slot's fence is unsignalled (reset after its
        // last wait). `Ctx::submit` notices a lost device.
        if let Err(e) = self.ctx.submit(&submit, self.slots[slot].fence) {
            self.release(slot);
            return Err(e);
        }
        self.queue.push_back(InFlight {
            slot,
            op,
            planned,
            submitted_at: Instant::now(),
            pins,
            keep,
        });
        self.max_seen = self.max_seen.max(self.queue.len());
        Ok(())
    }

    /// Waits (with the fence timeout) for the oldest piece and reads its timestamps. The slot
    /// stays taken until [`Ring::release`] (its partials are read first). A timeout leaves the
    /// piece in flight, with its pins (a later wait tries again).
    pub fn wait_oldest(&mut self) -> Result<Option<Done>, EngineError> {
        let Some(front) = self.queue.front() else {
            return Ok(None);
        };
        let slot = front.slot;
        if let Err(e) = self.ctx.wait(self.slots[slot].fence) {
            if e == EngineError::DeviceLost {
                // A lost device runs nothing more: the piece's buffers may go. Its slot is not
                // reused (the engine is re-created after a device loss).
                self.queue.pop_front();
            }
            return Err(e);
        }
        let now = Instant::now();
        let Some(piece) = self.queue.pop_front() else {
            return Ok(None);
        };
        let host_ns =
            super::nanos(now.saturating_duration_since(piece.submitted_at.max(self.last_done)));
        self.last_done = now;
        let device_ns = self.read_timestamps(slot)?;
        Ok(Some(Done {
            piece,
            device_ns,
            host_ns,
        }))
    }

    fn read_timestamps(&self, slot: usize) -> Result<Option<u64>, EngineError> {
        if self.ctx.timestamp_bits == 0 {
            return Ok(None);
        }
        let mut stamps = [0u64; 2];
        // SAFETY: both queries of the slot were written by its completed submission.
        unsafe {
            self.ctx.device.get_query_pool_results(
                self.query_pool,
                2 * slot as u32,
                &mut stamps,
                vk::QueryResultFlags::TYPE_64 | vk::QueryResultFlags::WAIT,
            )
        }
        .map_err(|e| vk_err("vkGetQueryPoolResults", e))?;
        let ticks = stamps[1].wrapping_sub(stamps[0]) & mask(self.ctx.timestamp_bits);
        Ok(Some(
            (ticks as f64 * f64::from(self.ctx.limits.timestamp_period)) as u64,
        ))
    }

    /// Waits for every piece in flight and drops them (their results are discarded): for an
    /// operation abandoned part-way, an engine reset, or the engine's end. A piece whose wait
    /// fails without it leaving the ring (a timeout: it may still run) stops the drain, and the
    /// rest stays in flight, pinned; after a device loss every piece is dropped (nothing runs
    /// any more). Returns the first error.
    pub fn wait_all(&mut self) -> Result<(), EngineError> {
        let mut first = None;
        loop {
            let before = self.queue.len();
            match self.wait_oldest() {
                Ok(Some(done)) => self.release(done.piece.slot),
                Ok(None) => break,
                Err(e) => {
                    let stays = self.queue.len() == before;
                    first.get_or_insert(e);
                    if stays {
                        break;
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let waited = self.wait_all();
        if !self.queue.is_empty() {
            // Freeing the pinned buffers now could hand memory the device still writes to
            // another vGPU; leak them (and the ring's objects) instead.
            log::error!(
                "{} submission(s) still on the device at engine end ({waited:?}); leaking their \
                 buffers",
                self.queue.len()
            );
            for piece in self.queue.drain(..) {
                std::mem::forget(piece.pins);
                std::mem::forget(piece.keep);
            }
            return;
        }
        let d = &self.ctx.device;
        // SAFETY: nothing is in flight; these objects were made by this ring.
        unsafe {
            for s in &self.slots {
                d.destroy_buffer(s.partials.buffer, None);
                d.free_memory(s.partials.memory, None);
                d.destroy_fence(s.fence, None);
                d.destroy_descriptor_pool(s.descriptor_pool, None);
            }
            d.destroy_query_pool(self.query_pool, None);
            d.destroy_command_pool(self.command_pool, None);
        }
    }
}
