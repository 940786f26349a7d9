//! The 3D side of a device with a vGPU: contexts (driver channels), buffer resources, 3D
//! transfers and command-stream submission. [`Gpu3d`] is owned by [`super::VirtioGpuDevice`],
//! which routes every 3D command here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use vgpu_protocol::channel::{buffer_size, buffer_transfer, VGPU_CAPSET_ID};
use vgpu_protocol::virtio_gpu::{
    CtxCreate, ResourceCreate3d, Transfer3d, VIRTIO_GPU_CMD_SUBMIT_3D,
};
use vgpu_protocol::MemEntries;

/// `VIRTIO_GPU_CONTEXT_INIT_CAPSET_ID_MASK`: the capset id bits of CTX_CREATE.context_init.
const CONTEXT_INIT_CAPSET_ID_MASK: u32 = 0xff;
use vm_memory::GuestMemory;

use crate::driver::partition::PartitionCharge;
use crate::driver::{Channel, DeviceBuffer, DriverError, Vgpu};

use super::backing::Backing;
use super::budget::{Charge, MemoryBudget};
use super::buffer_resource::BufferResource;
use super::error::GpuError;
use super::launch::LaunchState;
use super::resource::AttachedBacking;
use super::submit::{self, JobNotifier};

/// Most contexts one VM may have.
pub const MAX_CONTEXTS: usize = 64;
/// Device memory charged per context (its channel and bookkeeping).
pub const CONTEXT_CHARGE_BYTES: u64 = 64 << 10;

/// A guest 3D context: a channel on the vGPU and the resources attached to it.
pub struct Context {
    channel: Channel,
    attached: HashSet<u32>,
    /// Guest modules, bindings and push constants (protocol 1.2).
    launch: LaunchState,
    _charge: PartitionCharge,
}

/// The 3D state of one VM.
pub struct Gpu3d {
    vgpu: Arc<Vgpu>,
    contexts: HashMap<u32, Context>,
    buffers: HashMap<u32, BufferResource>,
    notifier: Option<Arc<dyn JobNotifier>>,
    noop: Option<Arc<DeviceBuffer>>,
}

fn driver_err(e: DriverError) -> GpuError {
    match e {
        DriverError::Buffer(b) => GpuError::Buffer(b),
        _ => GpuError::VgpuGone,
    }
}

/// Direction of a 3D transfer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Guest backing → device buffer (TRANSFER_TO_HOST_3D).
    ToHost,
    /// Device buffer → guest backing (TRANSFER_FROM_HOST_3D).
    FromHost,
}

impl Gpu3d {
    /// 3D state over `vgpu`, no contexts or buffers yet.
    pub fn new(vgpu: Arc<Vgpu>) -> Self {
        Gpu3d {
            vgpu,
            contexts: HashMap::new(),
            buffers: HashMap::new(),
            notifier: None,
            noop: None,
        }
    }

    /// The vGPU.
    pub fn vgpu(&self) -> &Arc<Vgpu> {
        &self.vgpu
    }

    /// The vGPU's partition as the budget 2D resources are charged to.
    pub fn budget(&self) -> Arc<dyn MemoryBudget> {
        self.vgpu.budget()
    }

    /// Where completions of submitted jobs are reported.
    pub fn set_notifier(&mut self, notifier: Arc<dyn JobNotifier>) {
        self.notifier = Some(notifier);
    }

    /// Number of live contexts.
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// True if `id` is a buffer resource.
    pub fn has_buffer(&self, id: u32) -> bool {
        self.buffers.contains_key(&id)
    }

    /// A buffer resource.
    pub fn buffer(&self, id: u32) -> Option<&BufferResource> {
        self.buffers.get(&id)
    }

    /// Drops every context (cancelling queued jobs) and buffer.
    pub fn reset(&mut self) {
        self.contexts = HashMap::new();
        self.buffers = HashMap::new();
    }

    /// CTX_CREATE for `ctx_id` (from the header).
    pub fn ctx_create(&mut self, ctx_id: u32, c: &CtxCreate) -> Result<(), GpuError> {
        if ctx_id == 0 || self.contexts.contains_key(&ctx_id) {
            return Err(GpuError::InvalidContext(ctx_id));
        }
        // With CONTEXT_INIT the low 8 bits name the capset (0: the default, ours); the rest is
        // reserved. Without it Linux sends 0.
        let capset = c.context_init & CONTEXT_INIT_CAPSET_ID_MASK;
        if c.context_init != capset || (capset != 0 && capset != VGPU_CAPSET_ID) {
            return Err(GpuError::ContextInit {
                ctx_id,
                capset: c.context_init,
            });
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return Err(GpuError::TooManyContexts(MAX_CONTEXTS));
        }
        let charge = self.vgpu.partition().charge_guard(CONTEXT_CHARGE_BYTES)?;
        let channel = self.vgpu.create_channel().map_err(driver_err)?;
        self.contexts
            .try_reserve(1)
            .map_err(|_| GpuError::AllocFailed(CONTEXT_CHARGE_BYTES))?;
        self.contexts.insert(
            ctx_id,
            Context {
                channel,
                attached: HashSet::new(),
                launch: LaunchState::default(),
                _charge: charge,
            },
        );
        Ok(())
    }

    /// CTX_DESTROY: drops the context and its channel (queued jobs are cancelled).
    pub fn ctx_destroy(&mut self, ctx_id: u32) -> Result<(), GpuError> {
        let ctx = self
            .contexts
            .remove(&ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))?;
        drop(ctx);
        Ok(())
    }

    /// CTX_ATTACH_RESOURCE / CTX_DETACH_RESOURCE. `exists` tells whether a 2D resource has the id
    /// (2D resources may be attached, but never used by a stream).
    pub fn ctx_attach(
        &mut self,
        ctx_id: u32,
        resource: u32,
        attach: bool,
        exists_2d: bool,
    ) -> Result<(), GpuError> {
        let known = exists_2d || self.buffers.contains_key(&resource);
        let ctx = self
            .contexts
            .get_mut(&ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))?;
        if !known {
            return Err(GpuError::UnknownResource(resource));
        }
        if attach {
            ctx.attached
                .try_reserve(1)
                .map_err(|_| GpuError::AllocFailed(4))?;
            ctx.attached.insert(resource);
        } else {
            ctx.attached.remove(&resource);
        }
        Ok(())
    }

    /// RESOURCE_CREATE_3D; the caller has checked that the id is free and non-zero.
    pub fn create_buffer(&mut self, c: &ResourceCreate3d) -> Result<(), GpuError> {
        let size = buffer_size(c)?;
        let buffer = self.vgpu.alloc_buffer(size).map_err(driver_err)?;
        self.buffers
            .try_reserve(1)
            .map_err(|_| GpuError::AllocFailed(size))?;
        self.buffers
            .insert(c.resource_id, BufferResource::new(buffer));
        Ok(())
    }

    /// RESOURCE_UNREF of a buffer: frees it (a job still using it keeps the memory until it
    /// ends) and detaches it from every context. False if `id` is not a buffer.
    pub fn unref_buffer(&mut self, id: u32) -> bool {
        if self.buffers.remove(&id).is_none() {
            return false;
        }
        for ctx in self.contexts.values_mut() {
            ctx.attached.remove(&id);
        }
        true
    }

    /// Forgets `id` in every context's attachments (a 2D resource was unreferenced, so a later
    /// resource with the same id is not attached implicitly).
    pub fn forget_attachments(&mut self, id: u32) {
        for ctx in self.contexts.values_mut() {
            ctx.attached.remove(&id);
        }
    }

    /// ATTACH_BACKING on a buffer: stores the guest staging area.
    pub fn attach_backing<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        id: u32,
        entries: MemEntries<'_>,
        budget: &Arc<dyn MemoryBudget>,
    ) -> Result<(), GpuError> {
        let res = self
            .buffers
            .get_mut(&id)
            .ok_or(GpuError::UnknownResource(id))?;
        if res.staging.is_some() {
            return Err(GpuError::BackingAttached(id));
        }
        let charge = Charge::new(budget, Backing::host_bytes(entries.len()))?;
        let staging = Backing::new(mem, entries)?;
        res.staging = Some(AttachedBacking::new(staging, charge));
        Ok(())
    }

    /// DETACH_BACKING on a buffer.
    pub fn detach_backing(&mut self, id: u32) -> Result<(), GpuError> {
        let res = self
            .buffers
            .get_mut(&id)
            .ok_or(GpuError::UnknownResource(id))?;
        res.staging
            .take()
            .map(|_| ())
            .ok_or(GpuError::NoBacking(id))
    }

    /// RESOURCE_ASSIGN_UUID on a buffer.
    pub fn assign_uuid(
        &mut self,
        id: u32,
        make: impl FnOnce() -> [u8; 16],
    ) -> Result<[u8; 16], GpuError> {
        let res = self
            .buffers
            .get_mut(&id)
            .ok_or(GpuError::UnknownResource(id))?;
        Ok(*res.uuid.get_or_insert_with(make))
    }

    /// TRANSFER_TO_HOST_3D / TRANSFER_FROM_HOST_3D on a buffer: moves `box.w` bytes between
    /// buffer bytes `[box.x, +w)` and backing bytes `[offset, +w)`. Every check happens before
    /// any byte moves. `is_2d` tells whether a 2D resource has the id.
    pub fn transfer<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        t: &Transfer3d,
        dir: Direction,
        is_2d: bool,
    ) -> Result<(), GpuError> {
        let id = t.resource_id;
        let res = self.buffers.get(&id).ok_or(if is_2d {
            GpuError::NotABuffer(id)
        } else {
            GpuError::UnknownResource(id)
        })?;
        let staging = &res.staging.as_ref().ok_or(GpuError::NoBacking(id))?.backing;
        let bt = buffer_transfer(t)?;
        res.check_range(id, bt.resource_offset, bt.len)?;
        if bt
            .backing_offset
            .checked_add(bt.len)
            .is_none_or(|end| end > staging.len())
        {
            return Err(GpuError::BeyondBacking {
                resource: id,
                offset: bt.backing_offset,
                len: bt.len,
                total: staging.len(),
            });
        }
        // One copy, straight between guest memory and device memory (no bounce buffer).
        let len = usize::try_from(bt.len).map_err(|_| GpuError::AllocFailed(bt.len))?;
        let (ro, bo) = (bt.resource_offset, bt.backing_offset);
        match dir {
            Direction::ToHost => res
                .buffer
                .with_bytes_mut(ro, len, |dst| staging.read_into(mem, bo, dst))??,
            Direction::FromHost => res
                .buffer
                .with_bytes(ro, len, |src| staging.write_from(mem, bo, src))??,
        }
        Ok(())
    }

    /// SUBMIT_3D on `ctx_id`: validates the whole stream, builds the jobs and submits them.
    /// `Ok(true)`: submitted, the notifier will be called with `token`; `Ok(false)`: nothing to
    /// run (empty stream), answer now. `is_2d` tells whether a 2D resource has an id.
    pub fn submit(
        &mut self,
        ctx_id: u32,
        stream: &[u8],
        token: u64,
        is_2d: impl Fn(u32) -> bool,
    ) -> Result<bool, GpuError> {
        let noop = match &self.noop {
            Some(b) => Arc::clone(b),
            None => {
                let b = self.vgpu.alloc_buffer(0).map_err(driver_err)?;
                self.noop = Some(Arc::clone(&b));
                b
            }
        };
        let ctx = self
            .contexts
            .get_mut(&ctx_id)
            .ok_or(GpuError::InvalidContext(ctx_id))?;
        submit::check_stream(stream, ctx_id, &ctx.attached, &self.buffers, is_2d)?;
        let scope = submit::ModuleScope {
            launch: &ctx.launch,
            vgpu: &self.vgpu,
            ctx_id,
            attached: &ctx.attached,
        };
        let mut prepared = submit::prepare(stream, &self.buffers, &noop, scope)?;
        // Guest-module state changes only once the whole stream is accepted.
        let launch = prepared.launch.take();
        let submitted = if prepared.is_empty() {
            false
        } else {
            let notifier = self
                .notifier
                .clone()
                .ok_or(GpuError::Unsupported(VIRTIO_GPU_CMD_SUBMIT_3D))?;
            submit::submit(prepared, &ctx.channel, &self.vgpu, token, notifier)?;
            true
        };
        if let Some(launch) = launch {
            ctx.launch = launch;
        }
        Ok(submitted)
    }
}
