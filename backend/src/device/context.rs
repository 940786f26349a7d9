//! The 3D side of a device with a vGPU: contexts (driver channels), buffer resources, transfers
//! and command-stream submission. [`Gpu3d`] is owned by [`super::VirtioGpuDevice`], which routes
//! every 3D command here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::driver::Vgpu;

use super::budget::MemoryBudget;

/// The 3D state of one VM.
pub struct Gpu3d {
    vgpu: Arc<Vgpu>,
    contexts: HashMap<u32, ()>,
}

impl Gpu3d {
    /// 3D state over `vgpu`, no contexts or buffers yet.
    pub fn new(vgpu: Arc<Vgpu>) -> Self {
        Gpu3d {
            vgpu,
            contexts: HashMap::new(),
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

    /// Number of live contexts.
    pub fn context_count(&self) -> usize {
        self.contexts.len()
    }

    /// Drops every context (cancelling queued jobs) and buffer.
    pub fn reset(&mut self) {
        self.contexts = HashMap::new();
    }
}
