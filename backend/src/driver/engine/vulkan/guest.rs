//! Guest modules on the Vulkan engine: the compiler VM threads use ([`VkModuleCompiler`]), the
//! compiled module ([`VkGuestModule`], a compute pipeline on the guest layout of
//! [`super::context::ComputeLayout`]), and the recording of a launch's pieces.
//!
//! A launch is split into pieces along its grid with `vkCmdDispatchBase`, in row-major order of
//! workgroups: whole z-planes, else whole rows of one plane, else a run within one row, so every
//! piece is one box. Pieces are sized from the module's measured device time per workgroup
//! (first piece: one workgroup per device thread on a CPU device, 16 otherwise). The engine's
//! control block (binding [`CONTROL_BINDING`]) lives in the slot's host-visible partials
//! buffer: the grid is written before the piece is submitted, and the status the loop budget
//! sets is read after it completed.

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ash::vk;

use super::context::{vk_err, Ctx};
use super::gpu::Gpu;
use super::{Planned, VulkanEngine};
use crate::driver::engine::EngineError;
use crate::driver::module::{CompiledModule, Dispatch, ModuleCompiler, SLOTS};
use crate::driver::spirv::{
    ModuleLimits, PreparedModule, CONTROL_BINDING, CONTROL_BYTES, CONTROL_GRID_OFFSET,
    CONTROL_STATUS_OFFSET,
};

/// Loop back edges one invocation may take by default (see `--loop-budget`).
pub const DEFAULT_LOOP_BUDGET: u32 = 1 << 16;
/// Newest SPIR-V the engine's Vulkan 1.1 instance consumes.
const MAX_SPIRV: (u8, u8) = (1, 3);
/// Host memory a compiled pipeline is estimated to take, charged with its module.
const PIPELINE_FOOTPRINT: u64 = 256 << 10;

/// Builds a compute pipeline for `words` on `ctx`'s guest layout.
fn build_pipeline(ctx: &Ctx, words: &[u32], entry: &CString) -> Result<vk::Pipeline, EngineError> {
    let d = &ctx.device;
    // SAFETY: valid create infos on a live device; the shader module is destroyed here, the
    // pipeline by its owner.
    unsafe {
        let module = d
            .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(words), None)
            .map_err(|e| vk_err("vkCreateShaderModule", e))?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(entry);
        let info = [vk::ComputePipelineCreateInfo::default()
            .stage(stage)
            .layout(ctx.guest_layout.pipeline_layout)
            .flags(vk::PipelineCreateFlags::DISPATCH_BASE)];
        let made = d.create_compute_pipelines(vk::PipelineCache::null(), &info, None);
        d.destroy_shader_module(module, None);
        made.map_err(|(_, e)| vk_err("vkCreateComputePipelines", e))?
            .first()
            .copied()
            .ok_or_else(|| EngineError::Device("no pipeline made".into()))
    }
}

/// The pipeline of a module and the device it was built on.
struct Built {
    generation: u64,
    ctx: Arc<Ctx>,
    pipeline: vk::Pipeline,
}

/// A guest module compiled for the Vulkan engine.
pub(crate) struct VkGuestModule {
    gpu: Arc<Gpu>,
    /// The instrumented words, kept to rebuild the pipeline on a re-created device.
    words: Arc<Vec<u32>>,
    entry: CString,
    built: Mutex<Built>,
    /// Measured device ns per workgroup (f64 bits; 0: not measured yet).
    ns_per_group: AtomicU64,
}

impl std::fmt::Debug for VkGuestModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VkGuestModule")
            .field("words", &self.words.len())
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl VkGuestModule {
    /// The pipeline on the device of `generation`, rebuilt there (on the driver thread) if the
    /// module was compiled on a device lost since.
    fn pipeline(&self, ctx: &Arc<Ctx>, generation: u64) -> Result<vk::Pipeline, EngineError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if built.generation == generation {
            return Ok(built.pipeline);
        }
        let (c, words, entry) = (Arc::clone(ctx), Arc::clone(&self.words), self.entry.clone());
        let pipeline = self
            .gpu
            .driver
            .run(move || build_pipeline(&c, &words, &entry))??;
        let old = std::mem::replace(
            &mut *built,
            Built {
                generation,
                ctx: Arc::clone(ctx),
                pipeline,
            },
        );
        // SAFETY: the old device was lost: nothing of it runs any more.
        unsafe { old.ctx.device.destroy_pipeline(old.pipeline, None) };
        Ok(pipeline)
    }

    /// Measured ns per workgroup, if any.
    fn ns_per_group(&self) -> Option<f64> {
        let v = f64::from_bits(self.ns_per_group.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    /// Folds in a piece of `groups` workgroups that took `ns`.
    pub(super) fn observe(&self, groups: u64, ns: u64) {
        if groups == 0 || ns == 0 {
            return;
        }
        let sample = ns as f64 / groups as f64;
        let next = match self.ns_per_group() {
            Some(est) => est * 0.75 + sample.min(est * 8.0) * 0.25,
            None => sample,
        };
        self.ns_per_group.store(next.to_bits(), Ordering::Relaxed);
    }
}

impl Drop for VkGuestModule {
    fn drop(&mut self) {
        let built = self.built.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: every piece that runs the pipeline holds a reference to this module until it
        // completed, so nothing uses it any more.
        unsafe { built.ctx.device.destroy_pipeline(built.pipeline, None) };
    }
}

impl CompiledModule for VkGuestModule {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn footprint_bytes(&self) -> u64 {
        PIPELINE_FOOTPRINT
    }
}

/// Compiles guest modules on the shared device (on its driver thread).
pub(crate) struct VkModuleCompiler {
    pub gpu: Arc<Gpu>,
    pub loop_budget: u32,
}

impl std::fmt::Debug for VkModuleCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VkModuleCompiler")
            .field("loop_budget", &self.loop_budget)
            .finish_non_exhaustive()
    }
}

impl ModuleCompiler for VkModuleCompiler {
    fn limits(&self) -> ModuleLimits {
        let device = self.gpu.read();
        let ctx = device.ctx();
        let l = &ctx.limits;
        ModuleLimits {
            max_words: (vgpu_protocol::channel::MAX_MODULE_BYTES / 4) as usize,
            max_workgroup_size: l.max_compute_work_group_size,
            max_workgroup_invocations: l.max_compute_work_group_invocations,
            max_shared_bytes: l.max_compute_shared_memory_size,
            max_push_constant_bytes: vgpu_protocol::channel::MAX_PUSH_CONSTANT_BYTES,
            loop_budget: self.loop_budget,
            features: ctx.guest.features,
        }
    }

    fn compile(&self, module: &PreparedModule) -> Result<Arc<dyn CompiledModule>, EngineError> {
        // The engine's instance asks for Vulkan 1.1, which consumes SPIR-V up to 1.3.
        if module.spirv_version > MAX_SPIRV {
            let (major, minor) = module.spirv_version;
            return Err(EngineError::Unsupported(format!(
                "SPIR-V {major}.{minor} needs a newer Vulkan than the engine's 1.1: compile with \
                 --target-env vulkan1.1"
            )));
        }
        let entry = CString::new(module.entry.as_str())
            .map_err(|_| EngineError::Unsupported("entry point name with a NUL".into()))?;
        let (ctx, generation) = {
            let device = self.gpu.live()?;
            (Arc::clone(device.ctx()), device.generation())
        };
        let words = Arc::new(module.words.clone());
        let (c, w, e) = (Arc::clone(&ctx), Arc::clone(&words), entry.clone());
        let pipeline = self.gpu.driver.run(move || build_pipeline(&c, &w, &e))??;
        Ok(Arc::new(VkGuestModule {
            gpu: Arc::clone(&self.gpu),
            words,
            entry,
            built: Mutex::new(Built {
                generation,
                ctx,
                pipeline,
            }),
            ns_per_group: AtomicU64::new(0),
        }))
    }
}

/// The Vulkan module of a launch.
pub(super) fn vk_module(d: &Dispatch) -> Result<&VkGuestModule, EngineError> {
    d.module
        .compiled()
        .as_any()
        .downcast_ref::<VkGuestModule>()
        .ok_or_else(|| EngineError::Device("module not compiled by this engine".into()))
}

/// The box of workgroups starting at linear (row-major) workgroup `at` of `grid`, of at most
/// `want` workgroups: whole planes, else whole rows of one plane, else a run within one row.
/// Returns the base, the counts and the workgroups covered.
pub(super) fn piece_box(grid: [u32; 3], at: u64, want: u64) -> ([u32; 3], [u32; 3], u64) {
    let [gx, gy, gz] = grid.map(u64::from);
    let plane = gx * gy;
    let (z, in_plane) = (at / plane, at % plane);
    let (y, x) = (in_plane / gx, in_plane % gx);
    let want = want.max(1);
    let (base, count) = if in_plane == 0 && want >= plane {
        let planes = (want / plane).min(gz - z);
        ([0, 0, z], [gx, gy, planes])
    } else if x == 0 && want >= gx {
        let rows = (want / gx).min(gy - y);
        ([0, y, z], [gx, rows, 1])
    } else {
        ([x, y, z], [want.min(gx - x), 1, 1])
    };
    let units = count.iter().product();
    // Every value is bounded by the grid's u32 dimensions.
    (base.map(|v| v as u32), count.map(|v| v as u32), units)
}

impl VulkanEngine {
    /// Records the next piece of a guest launch.
    pub(super) fn record_dispatch(
        &self,
        d: &Dispatch,
        at: u64,
        target_ns: u64,
    ) -> Result<Planned, EngineError> {
        let module = vk_module(d)?;
        let pipeline = module.pipeline(&self.ctx, self.generation)?;
        let remaining = d.workgroups().saturating_sub(at);
        let want = match module.ns_per_group() {
            Some(per) => ((target_ns.max(1) as f64 / per) as u64).max(1),
            None => self.min_guest_groups,
        }
        .min(remaining);
        let (base, count, units) = piece_box(d.groups, at, want);
        let partials = &self.ring.slot(self.cur).partials;
        // SAFETY: the slot is ours (its last piece completed); its partials buffer is mapped,
        // host-coherent and larger than the control block, and is read by the device only
        // after this submission (host writes before vkQueueSubmit are visible to it).
        unsafe {
            let p = partials.mapped;
            std::ptr::write_bytes(p, 0, CONTROL_BYTES as usize);
            let grid = p.add(CONTROL_GRID_OFFSET as usize).cast::<u32>();
            for (i, g) in d.groups.iter().enumerate() {
                grid.add(i).write_unaligned(*g);
            }
        }
        let pad = Self::scratch_window(partials);
        let mut windows: [vk::DescriptorBufferInfo; SLOTS + 1] = [pad.info; SLOTS + 1];
        for (slot, bound) in d.bindings.iter().enumerate() {
            if let Some(b) = bound {
                let s = super::vk_buffer(&b.at)?;
                windows[slot] = vk::DescriptorBufferInfo {
                    buffer: s.buffer(),
                    offset: b.at.offset,
                    range: b.len,
                };
            }
        }
        windows[CONTROL_BINDING as usize] = vk::DescriptorBufferInfo {
            buffer: partials.buffer,
            offset: 0,
            range: CONTROL_BYTES,
        };
        self.bind_and_dispatch(
            pipeline,
            self.ctx.guest_layout.set_layout,
            self.ctx.guest_layout.pipeline_layout,
            &windows,
            &d.push,
            base,
            count,
        )?;
        Ok(Planned {
            units,
            cost_units: units as f64,
            partials: 0,
        })
    }

    /// True if the completed piece in `slot` ran out of its loop budget.
    pub(super) fn guest_status(&self, slot: usize) -> bool {
        let partials = &self.ring.slot(slot).partials;
        // SAFETY: the piece that used the slot completed (host barrier at its end); the word is
        // inside the mapped buffer.
        let status = unsafe {
            partials
                .mapped
                .add(CONTROL_STATUS_OFFSET as usize)
                .cast::<u32>()
                .read_unaligned()
        };
        status != 0
    }
}

#[cfg(test)]
mod tests {
    use super::piece_box;

    #[test]
    fn pieces_are_boxes_that_tile_the_grid_in_order() {
        for grid in [[1, 1, 1], [7, 1, 1], [5, 3, 1], [4, 3, 2], [3, 1, 5]] {
            for want in [1, 2, 3, 4, 7, 12, 100] {
                let total: u64 = grid.iter().map(|&g| u64::from(g)).product();
                let mut seen = vec![0u32; total as usize];
                let mut at = 0;
                while at < total {
                    let (base, count, units) = piece_box(grid, at, want);
                    assert!(
                        units >= 1 && units <= want.max(1),
                        "{grid:?} {want} {units}"
                    );
                    for z in base[2]..base[2] + count[2] {
                        for y in base[1]..base[1] + count[1] {
                            for x in base[0]..base[0] + count[0] {
                                let i = (z * grid[1] + y) * grid[0] + x;
                                seen[i as usize] += 1;
                                assert!(u64::from(i) >= at && u64::from(i) < at + units);
                            }
                        }
                    }
                    at += units;
                }
                assert!(
                    seen.iter().all(|&n| n == 1),
                    "{grid:?} want {want}: {seen:?}"
                );
            }
        }
    }
}
