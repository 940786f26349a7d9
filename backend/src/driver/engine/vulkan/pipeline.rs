//! The Vulkan engine's submission path: an operation's pieces go through the ring
//! ([`super::ring`]), up to its depth ahead, so the device runs piece i+1 while the host waits
//! for piece i, reads its timestamps and partial results, and the device thread does its
//! bookkeeping.
//!
//! Each call of [`Engine::run_chunk`](crate::driver::engine::Engine::run_chunk) tops the ring
//! up with pieces of the operation, then waits for the oldest one and reports its device time,
//! so the device thread still sees one piece per call and decides at piece boundaries. Before
//! it leaves an operation part-way (preemption) it calls
//! [`Engine::settle`](crate::driver::engine::Engine::settle), which waits for the rest of the
//! operation's pieces and reports their device time, charged to the same vGPU. Pieces of an
//! operation that was abandoned instead (its job failed or was cancelled) are waited for and
//! discarded before anything else is submitted; until then they pin their buffers (see
//! [`super::ring`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ash::vk;

use super::context::{device_barrier, host_barrier, vk_err};
use super::ring::Done;
use super::{
    lock_all, nanos, op_buffers, total_units, VkOpState, VulkanEngine, CRC_BLOCK, MAX_PARTIALS,
    NEXT_OP_ID, OVERHEAD_FACTOR,
};
use crate::driver::buffer::DevicePin;
use crate::driver::engine::{EngineError, Step};
use crate::driver::job::Op;

/// Largest host cost per piece the cost model takes into account (ns).
const MAX_OVERHEAD_NS: f64 = 2_000_000.0;

impl VulkanEngine {
    /// The command buffer of the slot being recorded.
    pub(super) fn cb(&self) -> vk::CommandBuffer {
        self.ring.slot(self.cur).cb
    }

    /// Most pieces this engine has had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.ring.max_seen()
    }

    /// Pieces in flight now (0 whenever the device thread is between operations).
    pub fn in_flight(&self) -> usize {
        self.ring.len()
    }

    /// Records the next piece of `op` (about `target_ns` of device time) into a free slot and
    /// submits it. The caller checked that a slot is free and work is left.
    fn submit_piece(
        &mut self,
        op: &Op,
        state: &mut VkOpState,
        target_ns: u64,
    ) -> Result<(), EngineError> {
        let Some(slot) = self.ring.acquire() else {
            return Err(EngineError::Device("no free submission slot".into()));
        };
        self.cur = slot;
        let (cb, pool) = {
            let s = self.ring.slot(slot);
            (s.cb, s.descriptor_pool)
        };
        let queries = self.ring.query_pool();
        let q0 = 2 * slot as u32;
        let stamps = self.ctx.timestamp_bits > 0;
        let d = &self.ctx.device;
        // SAFETY: the slot is free: its last piece completed (fence waited), so its pool,
        // command buffer and queries may be reset and re-recorded.
        let begun = unsafe {
            d.reset_descriptor_pool(pool, vk::DescriptorPoolResetFlags::empty())
                .map_err(|e| vk_err("vkResetDescriptorPool", e))
                .and_then(|()| {
                    d.reset_command_buffer(cb, vk::CommandBufferResetFlags::empty())
                        .map_err(|e| vk_err("vkResetCommandBuffer", e))
                })
                .and_then(|()| {
                    d.begin_command_buffer(
                        cb,
                        &vk::CommandBufferBeginInfo::default()
                            .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                    )
                    .map_err(|e| vk_err("vkBeginCommandBuffer", e))
                })
        };
        if let Err(e) = begun {
            self.ring.release(slot);
            return Err(e);
        }
        // SAFETY: recording. The start stamp waits for every earlier command (BOTTOM_OF_PIPE),
        // so a piece queued behind another is timed from when that one ended: each piece's
        // device time is its own.
        unsafe {
            device_barrier(d, cb);
            if stamps {
                d.cmd_reset_query_pool(cb, queries, q0, 2);
                d.cmd_write_timestamp(cb, vk::PipelineStageFlags::BOTTOM_OF_PIPE, queries, q0);
            }
        }
        let planned = self.record(op, state, target_ns);
        let d = &self.ctx.device;
        // SAFETY: recording.
        let ended = unsafe {
            if stamps {
                d.cmd_write_timestamp(cb, vk::PipelineStageFlags::BOTTOM_OF_PIPE, queries, q0 + 1);
            }
            host_barrier(d, cb);
            d.end_command_buffer(cb)
                .map_err(|e| vk_err("vkEndCommandBuffer", e))
        };
        let planned = match (planned, ended) {
            (Ok(p), Ok(())) => p,
            (Err(e), _) | (Ok(_), Err(e)) => {
                self.ring.release(slot);
                return Err(e);
            }
        };
        // Pinned while the lock guards of `pipeline_step` are held, so no host access is under
        // way on these buffers.
        let (reads, writes) = op_buffers(op);
        let pins = reads
            .into_iter()
            .map(|b| DevicePin::new(b, false))
            .chain(writes.into_iter().map(|b| DevicePin::new(b, true)))
            .collect();
        let units = planned.units;
        let keep = match op {
            Op::Dispatch(d) => Some(Arc::clone(d.module.compiled())),
            _ => None,
        };
        self.ring.submit(slot, state.id, planned, pins, keep)?;
        state.submitted += units;
        Ok(())
    }

    /// Folds a completed piece of `op` into `state` and frees its slot; returns its time (device
    /// time, or the host estimate without timestamps).
    fn complete_piece(&mut self, op: &Op, state: &mut VkOpState, done: Done) -> u64 {
        let Done {
            piece,
            device_ns,
            host_ns,
        } = done;
        let ns = device_ns.unwrap_or(host_ns);
        self.observe(op.kind(), piece.planned.cost_units, ns);
        let words = self.partial_words(piece.slot, piece.planned.partials);
        match op {
            Op::ReduceSumF32 { .. } => {
                for &w in words {
                    state.sum += f64::from(f32::from_bits(w));
                }
            }
            Op::Crc32c { .. } => {
                let mut left = piece.planned.units;
                for &w in words {
                    let len = left.min(CRC_BLOCK);
                    state.crc = crc32c::crc32c_combine(state.crc, w, len as usize);
                    left -= len;
                }
            }
            Op::Dispatch(d) => {
                state.budget_hit |= self.guest_status(piece.slot);
                if let Ok(module) = super::guest::vk_module(d) {
                    module.observe(piece.planned.units, ns);
                }
            }
            _ => {}
        }
        state.done += piece.planned.units;
        self.ring.release(piece.slot);
        ns
    }

    fn partial_words(&self, slot: usize, count: u64) -> &[u32] {
        let partials = &self.ring.slot(slot).partials;
        // SAFETY: the slot's partials buffer is mapped, host-coherent, MAX_PARTIALS words long,
        // and the piece that wrote it completed (host barrier recorded at its end); the slot is
        // not reused before the words are read.
        unsafe {
            std::slice::from_raw_parts(
                partials.mapped.cast::<u32>(),
                count.min(MAX_PARTIALS) as usize,
            )
        }
    }

    /// Waits for and discards the pieces of operations other than `id` (abandoned part-way).
    fn discard_others(&mut self, id: u64) -> Result<(), EngineError> {
        while self.ring.oldest_op().is_some_and(|op| op != id) {
            match self.ring.wait_oldest()? {
                Some(done) => self.ring.release(done.piece.slot),
                None => break,
            }
        }
        Ok(())
    }

    /// [`Engine::run_chunk`](crate::driver::engine::Engine::run_chunk): tops the ring up with
    /// pieces of `op`, waits for the oldest, folds it in.
    pub(super) fn run_pipelined(
        &mut self,
        op: &Op,
        state: &mut VkOpState,
        target_ns: u64,
    ) -> Result<Step, EngineError> {
        self.last_device_ns = None;
        let entered = Instant::now();
        if state.id == 0 {
            state.id = NEXT_OP_ID.fetch_add(1, Ordering::Relaxed);
            state.generation = self.generation;
        } else if state.generation != self.generation {
            // Started on a device that was lost since: its partial results went with it.
            return Err(EngineError::DeviceLost);
        }
        self.discard_others(state.id)?;
        if state.submitted > state.done && !self.ring.has(state.id) {
            // Only if the device thread switched operations without settling this one, or the
            // device was lost with pieces of it in flight.
            if self.ctx.is_lost() {
                return Err(EngineError::DeviceLost);
            }
            return Err(EngineError::Device(
                "pieces in flight of this operation were discarded".into(),
            ));
        }
        let total = total_units(op);
        if state.done >= total {
            self.returned = None;
            self.finish(op, state)?;
            return Ok(Step::Done);
        }
        let gap = match self.returned.take() {
            Some((id, at)) if id == state.id => nanos(entered.saturating_duration_since(at)),
            _ => 0,
        };
        let waited = match self.pipeline_step(op, state, target_ns, total) {
            Ok(waited) => waited,
            Err(e) => {
                // The operation is abandoned: nothing of it may stay in flight unpinned, and a
                // later operation must not queue behind it (a timeout leaves it pinned).
                if let Err(we) = self.ring.wait_all() {
                    log::error!("pieces of a failed operation did not complete: {we}");
                }
                return Err(e);
            }
        };
        if state.budget_hit {
            // The launch failed: the rest of it is not worth running.
            self.ring.wait_all()?;
            return Err(EngineError::LoopBudget(self.loop_budget));
        }
        let host = nanos(entered.elapsed()).saturating_sub(waited) + gap;
        let sample = (host as f64).min(MAX_OVERHEAD_NS);
        self.overhead_ns = self.overhead_ns * 0.75 + sample * 0.25;
        if state.done >= total {
            self.finish(op, state)?;
            return Ok(Step::Done);
        }
        self.returned = Some((state.id, Instant::now()));
        Ok(Step::More)
    }

    /// Submits pieces of `op` until the ring is full or the operation fully submitted, then
    /// waits for the oldest and folds it in; returns the ns spent blocked on its fence.
    fn pipeline_step(
        &mut self,
        op: &Op,
        state: &mut VkOpState,
        target_ns: u64,
        total: u64,
    ) -> Result<u64, EngineError> {
        let (reads, writes) = op_buffers(op);
        let held = lock_all(&reads, &writes)?;
        // The device is not switched while pieces are recorded and submitted and the oldest
        // is waited for ([`super::gpu`]); one switched since the engine was built fails here.
        let gpu = Arc::clone(&self.gpu);
        let device = gpu.read();
        if device.generation() != self.generation {
            return Err(EngineError::DeviceLost);
        }
        // Pieces no shorter than a few host costs per piece (see `overhead_ns`).
        let target_ns = target_ns.max((self.overhead_ns * OVERHEAD_FACTOR) as u64);
        while self.ring.len() < self.ring.depth() && state.submitted < total {
            self.submit_piece(op, state, target_ns)?;
        }
        let blocked = Instant::now();
        let done = self
            .ring
            .wait_oldest()?
            .ok_or_else(|| EngineError::Device("no piece in flight".into()))?;
        let waited = nanos(blocked.elapsed());
        drop(device);
        drop(held);
        let ns = self.complete_piece(op, state, done);
        if self.ctx.timestamp_bits > 0 {
            self.last_device_ns = Some(ns);
        }
        Ok(waited)
    }

    /// [`Engine::settle`](crate::driver::engine::Engine::settle): waits for the rest of `op`'s
    /// pieces and folds them in; returns their device time.
    pub(super) fn settle_pipelined(
        &mut self,
        op: &Op,
        state: &mut VkOpState,
    ) -> Result<Option<u64>, EngineError> {
        self.returned = None;
        let mut ns = 0u64;
        while state.id != 0 && self.ring.oldest_op() == Some(state.id) {
            match self.ring.wait_oldest()? {
                Some(done) => ns += self.complete_piece(op, state, done),
                None => break,
            }
        }
        if state.budget_hit {
            return Err(EngineError::LoopBudget(self.loop_budget));
        }
        Ok((self.ctx.timestamp_bits > 0).then_some(ns))
    }
}
